;; A guest that calls WASI's clock_time_get in a tight loop forever: host calls must not let it escape its
;; time limit.
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin
      (drop (call $now (i32.const 1) (i64.const 0) (i32.const 0)))
      (br $spin))))
