//! Module identity (`sha256:<hex>` of the bytes) and loaded, linked modules ready to instantiate.

use crate::sandbox::CoreState;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The content address of a module: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(String);

impl ModuleId {
    /// Hashes `bytes` into their id.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleId(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ModuleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("invalid module id `{s}`: expected `sha256:` and 64 hex digits"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("invalid module id `{s}`: expected `sha256:` and 64 lowercase hex digits"));
        }
        Ok(ModuleId(s.to_owned()))
    }
}

/// Which guest ABI a module follows (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A WASI command module (`_start`), SPEC §2.1.
    Command,
    /// A component of the `hivemind:task` world, SPEC §2.3.
    Component,
}

impl ModuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Command => "command",
            ModuleKind::Component => "component",
        }
    }

    /// Detects the kind from the binary header: components carry layer 1 in the version field.
    pub(crate) fn detect(bytes: &[u8]) -> ModuleKind {
        match bytes.get(4..8) {
            Some([_, _, 1, 0]) => ModuleKind::Component,
            _ => ModuleKind::Command,
        }
    }
}

/// A compiled and linked module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct LoadedModule {
    pub(crate) id: ModuleId,
    pub(crate) linked: Arc<Linked>,
}

pub(crate) enum Linked {
    Command(wasmtime::InstancePre<CoreState>),
    Component(crate::component::LinkedComponent),
}

impl LoadedModule {
    pub fn id(&self) -> &ModuleId {
        &self.id
    }

    pub fn kind(&self) -> ModuleKind {
        match *self.linked {
            Linked::Command(_) => ModuleKind::Command,
            Linked::Component(_) => ModuleKind::Component,
        }
    }

    /// The phases this module can run: commands take any phase; components those they export.
    pub fn supports(&self, phase: hivemind_proto::Phase) -> bool {
        match &*self.linked {
            Linked::Command(_) => true,
            Linked::Component(c) => c.supports(phase),
        }
    }
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule").field("id", &self.id).field("kind", &self.kind()).finish()
    }
}
