;; A guest that asks WASI to sleep for an hour (poll_oneoff on the monotonic clock): it must still end
;; at its timeout, and be cancellable.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; one clock subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic) at 16,
  ;; timeout 3600 s at 24, precision 0 at 32, flags 0 at 40
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))
