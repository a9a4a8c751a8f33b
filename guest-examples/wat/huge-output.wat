;; Writes 64 KiB blocks to stdout forever: must end with `output_too_large`.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; iovec at 0: buffer at 1024, length 65536
  (data (i32.const 0) "\00\04\00\00\00\00\01\00")
  (func (export "_start")
    (loop $write
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (br $write))))
