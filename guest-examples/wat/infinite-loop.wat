;; Spins forever: must end with `fuel_exhausted` (or `timeout` when fuel is ample).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever (br $forever))))
