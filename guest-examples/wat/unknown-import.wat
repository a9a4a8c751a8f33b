;; Imports a host function Hivemind does not provide: refused as `invalid_module`.
(module
  (import "env" "launch_missiles" (func $launch))
  (memory (export "memory") 1)
  (func (export "_start") (call $launch)))
