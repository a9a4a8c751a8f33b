;; A valid module that is not a WASI command (no `_start`): refused as `invalid_module`.
(module
  (func (export "compute") (result i32) (i32.const 42)))
