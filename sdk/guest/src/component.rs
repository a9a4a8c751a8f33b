//! Bindings of the `hivemind:task` WIT world (`wit/task.wit`) for components built for `wasm32-wasip2`.
//!
//! Implement [`Guest`] (`run`, `split`, `reduce`) on a type and export it with
//! `hivemind_guest::component::export_task!(MyTask with_types_in hivemind_guest::component);`. [`host::log`] and
//! [`host::progress`] call the host interface.

wit_bindgen::generate!({
    path: "../../wit",
    world: "task-split-reduce",
    pub_export_macro: true,
    export_macro_name: "export_task",
    default_bindings_module: "hivemind_guest::component",
});

pub use hivemind::task::host;
