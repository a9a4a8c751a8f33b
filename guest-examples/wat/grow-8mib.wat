;; Grows its memory to about 8 MiB, touches the last page and exits: fits a 16 MiB limit, not a 4 MiB one.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 127)) (i32.const -1)) (then unreachable))
    (i32.store (i32.const 8388600) (i32.const 42))))
