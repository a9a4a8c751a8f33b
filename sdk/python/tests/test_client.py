"""The Python client against a real coordinator and worker (processes of the `hivemind` binary on loopback).

Needs HIVEMIND_BIN (the `hivemind` binary) and HIVEMIND_GUESTS (a folder with echo.wasm, primes.wasm and
wordcount.wasm built for wasm32-wasip1); `.ci/run` sets both.
"""

import json
import os
import subprocess
import tempfile
import time

import pytest

from hivemind_client import (
    BadRequest,
    Client,
    Forbidden,
    NotFound,
    TaskCancelled,
    TaskFailed,
    Timeout,
    Unauthorized,
    Unreachable,
    parse_duration,
    parse_size,
)

BIN = os.environ.get("HIVEMIND_BIN", "hivemind")
GUESTS = os.environ.get("HIVEMIND_GUESTS", "")
CLIENT_TOKEN = "python-client-token-0001"
WORKER_TOKEN = "python-worker-token-0002"


def guest(name):
    path = os.path.join(GUESTS, f"{name}.wasm")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: set HIVEMIND_GUESTS to the folder of the built guest examples")
    return path


def start_coordinator(data_dir, *extra):
    proc = subprocess.Popen(
        [BIN, "--json", "coordinator", "--listen", "127.0.0.1:0", "--data-dir", data_dir,
         "--heartbeat", "200ms", "--dead-after", "1s", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail("the coordinator did not start")
    return proc, json.loads(line)["listening"]


def start_worker(url, slots, *extra):
    return subprocess.Popen([BIN, "--coordinator", url, *extra, "worker", "--slots", str(slots)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(*procs):
    for proc in procs:
        proc.kill()
        proc.wait()


def wait_for_workers(client, n, timeout=20):
    deadline = time.monotonic() + timeout
    while len(client.list_workers()) < n:
        assert time.monotonic() < deadline, f"{n} workers did not register"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster():
    with tempfile.TemporaryDirectory() as data_dir:
        coordinator, url = start_coordinator(data_dir)
        worker = start_worker(url, 2)
        try:
            wait_for_workers(Client(coordinator_url=url), 1)
            yield url
        finally:
            stop(worker, coordinator)


def test_upload_submit_and_get_result_in_input_order(cluster):
    client = Client(coordinator_url=cluster)
    module_id = client.upload_module(guest("primes"))
    assert module_id.startswith("sha256:")
    assert client.upload_module(guest("primes")) == module_id, "a second upload gives the same id"
    assert client.module_exists(module_id)
    task_id = client.submit_task(module=module_id, inputs=["1 100", "1 1000", b"1 10000"], priority=1)
    assert client.get_result(task_id, timeout=60) == [b"25", b"168", b"1229"]
    status = client.status(task_id)
    assert status["state"] == "succeeded"
    assert status["subtasks"]["succeeded"] == 3
    assert status["usage"]["fuel_consumed"] > 0
    assert any(t["task_id"] == task_id for t in client.list_tasks(state="succeeded"))
    subtasks = client.subtasks(task_id)
    assert [s["state"] for s in subtasks] == ["succeeded"] * 3


def test_submit_with_a_path_uploads_it_and_binary_inputs_round_trip(cluster):
    client = Client(coordinator_url=cluster)
    data = [bytes(range(256)), b"", "h\u00e9llo".encode("utf-8")]
    task_id = client.submit_task(module=guest("echo"), inputs=data)
    assert client.get_result(task_id, timeout=60) == data


def test_split_and_reduce_give_one_result(cluster):
    client = Client(coordinator_url=cluster)
    text = "the cat and the hat\nthe end\n" * 20
    task_id = client.submit_task(module=guest("wordcount"), inputs=[text], split=True, reduce=True)
    counts = json.loads(client.get_result(task_id, timeout=60))
    assert counts == {"the": 60, "cat": 20, "and": 20, "hat": 20, "end": 20}


def test_a_failed_subtask_raises_task_failed_naming_it(cluster):
    client = Client(coordinator_url=cluster)
    task_id = client.submit_task(module=guest("primes"), inputs=["1 10", "not a range"])
    with pytest.raises(TaskFailed) as failure:
        client.get_result(task_id, timeout=60)
    assert failure.value.code == "task_failed"
    assert "map subtask 1" in failure.value.message
    assert client.status(task_id)["state"] == "failed"


def test_limits_are_sent_and_enforced(cluster):
    client = Client(coordinator_url=cluster)
    task_id = client.submit_task(module=guest("primes"), inputs=["1 50000000"], fuel=1_000_000,
                                 memory="16MiB", timeout="5s")
    with pytest.raises(TaskFailed) as failure:
        client.get_result(task_id, timeout=60)
    assert "fuel_exhausted" in failure.value.message


def test_cancel_keeps_finished_results(cluster):
    client = Client(coordinator_url=cluster)
    task_id = client.submit_task(module=guest("primes"), inputs=["1 20000000"] * 40, timeout="60s")
    client.cancel(task_id)
    with pytest.raises(TaskCancelled) as cancelled:
        client.get_result(task_id, timeout=60)
    assert len(cancelled.value.outputs) == 40
    assert client.status(task_id)["state"] == "cancelled"


def test_wait_times_out_and_reports_progress(cluster):
    client = Client(coordinator_url=cluster)
    task_id = client.submit_task(module=guest("primes"), inputs=["1 30000000"] * 8)
    seen = []
    with pytest.raises(Timeout):
        client.wait(task_id, timeout=0.3, progress=seen.append)
    assert seen and seen[-1]["task_id"] == task_id
    client.cancel(task_id)


def test_idempotency_key_returns_the_same_task(cluster):
    client = Client(coordinator_url=cluster)
    first = client.submit_task(module=guest("echo"), inputs=["x"], idempotency_key="py-once")
    assert client.submit_task(module=guest("echo"), inputs=["x"], idempotency_key="py-once") == first


def test_api_errors_are_typed_with_their_codes(cluster):
    client = Client(coordinator_url=cluster)
    with pytest.raises(NotFound) as missing:
        client.status("no-such-task")
    assert missing.value.code == "task_not_found" and missing.value.status == 404
    with pytest.raises(BadRequest) as bad:
        client.submit_task(module="sha256:" + "0" * 64, inputs=["x"], priority=10**6)
    assert bad.value.status in (400, 422) and bad.value.code
    with pytest.raises(NotFound) as no_module:
        client.submit_task(module="sha256:" + "0" * 64, inputs=["x"])
    assert no_module.value.code == "module_not_found"
    with pytest.raises(BadRequest) as invalid:
        client.upload_module(b"\x00asm not really")
    assert invalid.value.code == "invalid_module"
    workers = client.list_workers()
    assert workers and workers[0]["slots"] == 2 and workers[0]["state"]


def test_unreachable_and_failover():
    with pytest.raises(Unreachable):
        Client(coordinator_url="http://127.0.0.1:9", timeout=2).list_tasks()


def test_failover_to_the_next_url(cluster):
    client = Client(coordinator_url=f"http://127.0.0.1:9,{cluster}")
    assert isinstance(client.list_tasks(), list)


def test_tokens_and_roles():
    with tempfile.TemporaryDirectory() as data_dir:
        coordinator, url = start_coordinator(data_dir, "--client-token", CLIENT_TOKEN,
                                             "--worker-token", WORKER_TOKEN)
        worker = start_worker(url, 1, "--token", WORKER_TOKEN)
        try:
            client = Client(coordinator_url=url, token=CLIENT_TOKEN)
            wait_for_workers(client, 1)
            task_id = client.submit_task(module=guest("echo"), inputs=["secret"])
            assert client.get_result(task_id, timeout=60) == [b"secret"]
            with pytest.raises(Unauthorized) as anonymous:
                Client(coordinator_url=url).list_tasks()
            assert anonymous.value.code == "unauthorized"
            with pytest.raises(Forbidden) as wrong_role:
                Client(coordinator_url=url, token=WORKER_TOKEN).status(task_id)
            assert wrong_role.value.code == "forbidden"
        finally:
            stop(worker, coordinator)


def test_units():
    assert parse_size("64MiB") == 64 << 20 and parse_size(10) == 10 and parse_size("1kb") == 1000
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration(3) == 3.0
    with pytest.raises(ValueError):
        parse_size("12 parsecs")
    with pytest.raises(ValueError):
        parse_duration("soon")
