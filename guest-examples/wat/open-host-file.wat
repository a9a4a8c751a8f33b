;; Tries to open /etc/passwd through every descriptor a preopen could have. The sandbox has no preopens, so
;; each attempt fails and the guest exits with code 77 (denied); if one succeeded it would write "escaped".
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "/etc/passwd")
  (data (i32.const 32) "\30\00\00\00\07\00\00\00")
  (data (i32.const 48) "escaped")
  (func (export "_start")
    (local $fd i32)
    (local.set $fd (i32.const 3))
    (loop $try
      (if (i32.eqz (call $path_open (local.get $fd) (i32.const 0) (i32.const 0) (i32.const 11)
                     (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 100)))
        (then
          (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 200)))
          (return)))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $try (i32.lt_u (local.get $fd) (i32.const 16))))
    (call $proc_exit (i32.const 77))))
