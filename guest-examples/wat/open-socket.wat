;; Tries to accept a connection on every descriptor a socket could have and to send on stdin. The sandbox
;; grants no sockets, so every call fails and the guest exits with code 77 (denied).
(module
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "\30\00\00\00\07\00\00\00")
  (data (i32.const 48) "escaped")
  (func (export "_start")
    (local $fd i32)
    (loop $try
      (if (i32.eqz (call $sock_accept (local.get $fd) (i32.const 0) (i32.const 100)))
        (then
          (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 200)))
          (return)))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $try (i32.lt_u (local.get $fd) (i32.const 16))))
    (if (i32.eqz (call $sock_send (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 0) (i32.const 100)))
      (then (return)))
    (call $proc_exit (i32.const 77))))
