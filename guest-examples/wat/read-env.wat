;; A guest that writes its whole environment (WASI environ_get: `KEY=VALUE\0` strings) to stdout, to show
;; that no host variable leaks into the sandbox.
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; count at 0, total size at 4; pointers at 1024, strings at 4096
    (if (call $sizes (i32.const 0) (i32.const 4)) (then unreachable))
    (if (i32.gt_u (i32.load (i32.const 4)) (i32.const 60000)) (then unreachable))
    (if (call $get (i32.const 1024) (i32.const 4096)) (then unreachable))
    (i32.store (i32.const 16) (i32.const 4096))
    (i32.store (i32.const 20) (i32.load (i32.const 4)))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
