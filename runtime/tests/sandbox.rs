//! Behaviour of the sandbox with real guests: every limit obeyed and exceeded, every misbehaving fixture
//! with its error kind (after which the same runtime still runs a normal module), the denied file and
//! socket access, the compiled-module cache, and the agreement of component/core and C/Rust examples.

use hivemind_guest_programs as programs;
use hivemind_proto::{ErrorKind, Limits, Phase};
use hivemind_runtime::{LoadedModule, ModuleKind, RunFailure, RunOutput, RunRequest, Runtime, RuntimeConfig};
use std::sync::OnceLock;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime starts"))
}

fn load(path: &str) -> LoadedModule {
    runtime().load(&programs::read(path)).expect("module loads")
}

fn request(phase: Phase, input: &[u8], limits: Limits) -> RunRequest {
    RunRequest {
        phase,
        input: input.to_vec().into(),
        limits,
        task_id: "t-test".into(),
        ..RunRequest::default()
    }
}

fn run(path: &str, input: &[u8], limits: Limits) -> Result<RunOutput, RunFailure> {
    runtime().run(&load(path), request(Phase::Map, input, limits))
}

fn fails(path: &str, limits: Limits) -> RunFailure {
    run(path, b"", limits).expect_err("the run must fail")
}

/// After any failure the same runtime must still run a normal module correctly.
fn assert_runtime_healthy() {
    let out = run(programs::ECHO, b"still alive", Limits::default()).expect("echo runs");
    assert_eq!(out.output, b"still alive");
}

/// Runs `module` on `input` and cancels the run from another thread after 50 ms; returns how it failed and
/// how long it took.
fn cancelled_after_50ms(
    module: &LoadedModule,
    input: &[u8],
    limits: Limits,
) -> (RunFailure, std::time::Duration) {
    let token = hivemind_runtime::CancelToken::new();
    let req = RunRequest { cancel: Some(token.clone()), ..request(Phase::Map, input, limits) };
    let started = std::time::Instant::now();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        token.cancel();
    });
    let err = runtime().run(module, req).expect_err("cancelled");
    canceller.join().expect("canceller thread");
    (err, started.elapsed())
}

fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(programs::WAT_UNREACHABLE).parent().expect("fixture folder");
    dir.join(format!("{name}.wasm")).to_string_lossy().into_owned()
}

#[test]
fn echo_returns_input_with_usage() {
    let out = run(programs::ECHO, b"hello hivemind", Limits::default()).expect("echo runs");
    assert_eq!(out.output, b"hello hivemind");
    assert!(out.usage.fuel_consumed > 0);
    assert!(out.usage.peak_memory_bytes >= 65536);
}

#[test]
fn guest_sees_only_its_environment_and_phase() {
    // wordcount's split of one line is that line: proves argv[1] reached the guest.
    let module = load(programs::WORDCOUNT);
    let out = runtime().run(&module, request(Phase::Split, b"a b\n", Limits::default())).expect("split");
    assert_eq!(hivemind_proto::frame::decode_frames(&out.output), Ok(vec![b"a b\n".to_vec()]));
}

#[test]
fn fuel_limit_obeyed() {
    let limits = Limits { fuel: 50_000_000, ..Limits::default() };
    let out = run(programs::PRIMES, b"1 2000", limits).expect("small range fits the fuel");
    assert_eq!(out.output, b"303");
    assert!(out.usage.fuel_consumed < 50_000_000);
}

#[test]
fn fuel_limit_exceeded() {
    let err = fails(&fixture("infinite-loop"), Limits { fuel: 10_000_000, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::FuelExhausted, "{err}");
    assert_eq!(err.usage.fuel_consumed, 10_000_000);
    let err = run(programs::PRIMES, b"1 10000000", Limits { fuel: 1_000_000, ..Limits::default() })
        .expect_err("a big range exhausts the fuel");
    assert_eq!(err.kind, ErrorKind::FuelExhausted);
    assert_runtime_healthy();
}

#[test]
fn memory_limit_obeyed() {
    let out = run(&fixture("grow-8mib"), b"", Limits { memory_bytes: 16 << 20, ..Limits::default() })
        .expect("8 MiB fits in 16 MiB");
    assert_eq!(out.usage.peak_memory_bytes, 128 * 65536);
}

#[test]
fn memory_limit_exceeded() {
    let err = fails(&fixture("grow-8mib"), Limits { memory_bytes: 4 << 20, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::MemoryLimit, "{err}");
    let err = fails(&fixture("memory-bomb"), Limits { memory_bytes: 32 << 20, ..Limits::default() });
    assert_eq!(
        err.kind,
        ErrorKind::MemoryLimit,
        "a refused grow followed by a trap is a memory limit: {err}"
    );
    assert!(err.usage.peak_memory_bytes <= 32 << 20);
    assert_runtime_healthy();
}

#[test]
fn timeout_obeyed() {
    let limits = Limits { timeout_ms: 10_000, ..Limits::default() };
    assert_eq!(run(programs::PRIMES, b"1 1000", limits).expect("quick run").output, b"168");
}

#[test]
fn timeout_exceeded() {
    let started = std::time::Instant::now();
    let err =
        fails(&fixture("infinite-loop"), Limits { timeout_ms: 100, fuel: 1 << 60, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "interrupted promptly");
    assert!(err.usage.wall_time_us >= 100_000);
    assert_runtime_healthy();
}

#[test]
fn output_limit_obeyed() {
    let limits = Limits { output_bytes: 11, ..Limits::default() };
    assert_eq!(run(programs::ECHO, b"exactly 11b", limits).expect("fits").output, b"exactly 11b");
}

#[test]
fn output_limit_exceeded() {
    let limits = Limits { output_bytes: 10, ..Limits::default() };
    let err = run(programs::ECHO, b"exactly 11b", limits).expect_err("one byte too many");
    assert_eq!(err.kind, ErrorKind::OutputTooLarge, "{err}");
    let err = fails(&fixture("huge-output"), Limits { output_bytes: 1 << 20, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::OutputTooLarge, "{err}");
    assert_runtime_healthy();
}

#[test]
fn log_is_capped_to_its_tail() {
    let err = fails(&fixture("exit-3"), Limits { log_bytes: 5, ..Limits::default() });
    assert_eq!(err.log, b"ay: 3");
}

#[test]
fn deep_recursion_traps() {
    let err = fails(&fixture("deep-recursion"), Limits::default());
    assert_eq!(err.kind, ErrorKind::Trap);
    assert!(err.message.contains("stack"), "{err}");
    assert_runtime_healthy();
}

#[test]
fn unreachable_traps() {
    let err = fails(&fixture("unreachable"), Limits::default());
    assert_eq!(err.kind, ErrorKind::Trap);
    assert!(err.message.contains("unreachable"), "{err}");
    assert_runtime_healthy();
}

#[test]
fn exit_code_reported_with_stderr_tail() {
    let err = fails(&fixture("exit-3"), Limits::default());
    assert_eq!(err.kind, ErrorKind::ExitCode);
    assert!(err.message.contains("code 3") && err.message.contains("going away: 3"), "{err}");
    assert_runtime_healthy();
}

#[test]
fn host_files_denied() {
    let err = fails(&fixture("open-host-file"), Limits::default());
    assert_eq!(err.kind, ErrorKind::ExitCode, "{err}");
    assert!(err.message.contains("code 77"), "the guest saw every open denied: {err}");
}

#[test]
fn sockets_denied() {
    let err = fails(&fixture("open-socket"), Limits::default());
    assert_eq!(err.kind, ErrorKind::ExitCode, "{err}");
    assert!(err.message.contains("code 77"), "the guest saw every socket call denied: {err}");
}

#[test]
fn invalid_modules_refused() {
    for (bytes, needle) in [
        (b"definitely not wasm".to_vec(), "not a valid WebAssembly module"),
        (programs::read(&fixture("not-a-command")), "_start"),
        (programs::read(&fixture("unknown-import")), "launch_missiles"),
    ] {
        let err = runtime().load(&bytes).expect_err("refused");
        assert_eq!(err.kind, ErrorKind::InvalidModule);
        assert!(err.message.contains(needle), "{err}");
    }
}

#[test]
fn component_detected_and_agrees_with_core_module() {
    let component = load(programs::PRIMES_COMPONENT);
    let core = load(programs::PRIMES);
    assert_eq!(component.kind(), ModuleKind::Component);
    assert_eq!(core.kind(), ModuleKind::Command);
    let go = |m: &LoadedModule, phase, input: &[u8]| {
        runtime().run(m, request(phase, input, Limits::default())).expect("runs").output
    };
    assert_eq!(go(&component, Phase::Map, b"1 100000"), b"9592");
    for (phase, input) in [(Phase::Map, b"1 100000".to_vec()), (Phase::Split, b"10 1000".to_vec())] {
        assert_eq!(go(&component, phase, &input), go(&core, phase, &input), "{phase}");
    }
    let frames = hivemind_proto::frame::encode_frames([&b"4"[..], b"25", b"1"]);
    assert_eq!(go(&component, Phase::Reduce, &frames), b"30");
    assert_eq!(go(&core, Phase::Reduce, &frames), b"30");
}

#[test]
fn component_limits_enforced() {
    let module = load(programs::PRIMES_COMPONENT);
    let limits = Limits { fuel: 1_000_000, ..Limits::default() };
    let err = runtime().run(&module, request(Phase::Map, b"1 10000000", limits)).expect_err("out of fuel");
    assert_eq!(err.kind, ErrorKind::FuelExhausted);
    let err =
        runtime().run(&module, request(Phase::Map, b"garbage", Limits::default())).expect_err("bad input");
    assert_eq!(err.kind, ErrorKind::ExitCode);
    assert!(err.message.contains("expected `LO HI`"), "{err}");
}

#[test]
fn c_and_rust_examples_agree() {
    for input in [&b"1 100000"[..], b"0 2", b"1000000 1010000"] {
        let rust = run(programs::PRIMES, input, Limits::default()).expect("rust runs").output;
        let c = run(programs::PRIMES_C, input, Limits::default()).expect("c runs").output;
        assert_eq!(rust, c, "input {:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn wordcount_split_map_reduce() {
    let module = load(programs::WORDCOUNT);
    let text = "the cat\nThe dog\n".repeat(100);
    let split =
        runtime().run(&module, request(Phase::Split, text.as_bytes(), Limits::default())).expect("split");
    let chunks = hivemind_proto::frame::decode_frames(&split.output).expect("frames");
    assert_eq!(chunks.len(), 25, "200 lines in chunks of 8");
    let outputs: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| runtime().run(&module, request(Phase::Map, c, Limits::default())).expect("map").output)
        .collect();
    let reduced = runtime()
        .run(
            &module,
            request(Phase::Reduce, &hivemind_proto::frame::encode_frames(&outputs), Limits::default()),
        )
        .expect("reduce");
    assert_eq!(String::from_utf8(reduced.output).expect("utf-8"), r#"{"cat":100,"dog":100,"the":200}"#);
}

#[test]
fn disk_cache_hit_on_second_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RuntimeConfig { cache_dir: Some(dir.path().to_path_buf()), ..RuntimeConfig::default() };
    let bytes = programs::read(programs::ECHO);
    let first = Runtime::new(config.clone()).expect("runtime");
    first.load(&bytes).expect("compiles");
    first.load(&bytes).expect("memory hit");
    let stats = first.cache_stats();
    assert_eq!((stats.compiled, stats.disk_writes, stats.memory_hits, stats.disk_hits), (1, 1, 1, 0));

    let second = Runtime::new(config).expect("runtime");
    let module = second.load(&bytes).expect("loads from disk");
    let stats = second.cache_stats();
    assert_eq!((stats.compiled, stats.disk_hits), (0, 1), "no recompilation: {stats:?}");
    let out = second.run(&module, request(Phase::Map, b"cached", Limits::default())).expect("runs");
    assert_eq!(out.output, b"cached");
    assert!(second.cached(module.id()).is_some());
}

#[test]
fn cancel_token_interrupts_run() {
    let module = load(&fixture("infinite-loop"));
    let (err, _) = cancelled_after_50ms(&module, b"", Limits { fuel: 1 << 60, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::Cancelled);
}

#[test]
fn run_async_does_not_block_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let module = load(programs::ECHO);
        let (a, b) = tokio::join!(
            runtime().run_async(&module, request(Phase::Map, b"a", Limits::default())),
            runtime().run_async(&module, request(Phase::Map, b"b", Limits::default())),
        );
        assert_eq!((a.expect("a").output, b.expect("b").output), (b"a".to_vec(), b"b".to_vec()));
    });
}

#[test]
fn environment_holds_only_the_three_variables() {
    let module = load(&fixture("read-env"));
    let req = RunRequest { subtask_index: 7, attempt: 2, ..request(Phase::Map, b"", Limits::default()) };
    let out = runtime().run(&module, req).expect("the guest reads its environment");
    let text = String::from_utf8(out.output).expect("utf-8");
    let mut vars: Vec<&str> = text.split('\0').filter(|v| !v.is_empty()).collect();
    vars.sort_unstable();
    assert_eq!(vars, ["HIVEMIND_ATTEMPT=2", "HIVEMIND_SUBTASK_INDEX=7", "HIVEMIND_TASK_ID=t-test"]);
}

#[test]
fn wasi_sleep_returns_after_its_time() {
    let started = std::time::Instant::now();
    let out = run(&fixture("sleep-briefly"), b"", Limits::default()).expect("the guest sleeps and wakes");
    assert_eq!(out.output, b"slept");
    assert!(started.elapsed() >= std::time::Duration::from_millis(20), "slept its 20 ms");
}

#[test]
fn wasi_sleep_cannot_outlive_the_timeout() {
    let started = std::time::Instant::now();
    let err = fails(&fixture("sleep-forever"), Limits { timeout_ms: 100, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "an hour's sleep ended at the timeout");
    assert_runtime_healthy();
}

#[test]
fn wasi_sleep_is_cancellable() {
    let (err, took) = cancelled_after_50ms(&load(&fixture("sleep-forever")), b"", Limits::default());
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    assert!(took < std::time::Duration::from_secs(5), "cancelled in its sleep");
}

#[test]
fn clock_calls_in_a_loop_end_at_the_timeout() {
    let err = fails(&fixture("clock-spin"), Limits { timeout_ms: 100, fuel: 1 << 60, ..Limits::default() });
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_runtime_healthy();
}

#[test]
fn component_sleep_returns_after_its_time() {
    let module = load(programs::SLEEPY_COMPONENT);
    assert_eq!(module.kind(), ModuleKind::Component);
    let started = std::time::Instant::now();
    let out =
        runtime().run(&module, request(Phase::Map, b"20", Limits::default())).expect("sleeps and wakes");
    assert_eq!(out.output, b"slept");
    assert!(started.elapsed() >= std::time::Duration::from_millis(20), "slept its 20 ms");
}

#[test]
fn component_sleep_cannot_outlive_the_timeout() {
    let module = load(programs::SLEEPY_COMPONENT);
    let started = std::time::Instant::now();
    let limits = Limits { timeout_ms: 100, ..Limits::default() };
    let err = runtime().run(&module, request(Phase::Map, b"3600000", limits)).expect_err("an hour's sleep");
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "ended at the timeout");
    assert_runtime_healthy();
}

#[test]
fn component_sleep_is_cancellable() {
    let (err, took) = cancelled_after_50ms(&load(programs::SLEEPY_COMPONENT), b"3600000", Limits::default());
    assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    assert!(took < std::time::Duration::from_secs(5), "cancelled in its sleep");
}
