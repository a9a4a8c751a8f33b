//! Authentication and roles (SPEC §7): bearer tokens for the `client`, `worker` and `admin` roles, and the
//! roles each route accepts.
//!
//! Tokens are kept only as their sha256 hashes; a presented token is hashed and compared with every known
//! hash in constant time (no early exit, so timing tells nothing about which byte differed or which entry
//! matched). With no token configured at all, authentication is off (the loopback-only default; the
//! coordinator refuses a non-loopback address then, unless told `--insecure`).

use crate::Coordinator;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Modules and tasks.
    Client,
    /// Register, heartbeat, lease, complete; download modules.
    Worker,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "client" => Some(Role::Client),
            "worker" => Some(Role::Worker),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who sent a request: its token's role and, for a client token of a tenant, that tenant. Handlers find
/// it in the request's extensions when authentication is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// A tenant's client sees only the tasks of its tenant.
    pub tenant: Option<String>,
}

/// The known tokens, as (sha256 of the token, what it stands for).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// No token configured: authentication is off.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a token given in clear (a flag or an environment variable).
    pub fn add(&mut self, role: Role, token: &str) -> Result<(), String> {
        if token.len() < 16 {
            return Err(format!("the {} token is too short: use at least 16 characters", role.as_str()));
        }
        self.entries.push((hash(token), Caller { role, tenant: None }));
        Ok(())
    }

    /// Adds the tokens of a token file: one `ROLE sha256:HEX [tenant=NAME]` per line (the hash of the token,
    /// e.g. `printf %s "$TOKEN" | sha256sum`; a tenant only for client tokens); blank lines and lines
    /// starting with `#` are skipped.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("token file line {}: {why}", n + 1);
            let mut fields = line.split_whitespace();
            let (Some(role), Some(digest), tenant, None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `ROLE sha256:HEX [tenant=NAME]`"));
            };
            let role = Role::parse(role).ok_or_else(|| bad("the role must be client, worker or admin"))?;
            let hex_digest = digest.strip_prefix("sha256:").unwrap_or(digest);
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut bytes)
                .map_err(|_| bad("the hash must be sha256:<64 hex digits> of the token"))?;
            let tenant = match tenant.map(|t| t.strip_prefix("tenant=")) {
                None => None,
                Some(Some(name)) if role == Role::Client && valid_tenant(name) => Some(name.to_owned()),
                Some(Some(_)) if role != Role::Client => {
                    return Err(bad("only client tokens belong to a tenant"));
                }
                _ => {
                    return Err(bad(
                        "the third field must be `tenant=NAME` (1 to 64 letters, digits, `-`, `_`)",
                    ));
                }
            };
            self.entries.push((bytes, Caller { role, tenant }));
        }
        Ok(())
    }

    /// Who `token` stands for, comparing its hash with every entry in constant time.
    pub fn caller_of(&self, token: &str) -> Option<&Caller> {
        let presented = hash(token);
        let mut found = None;
        for (known, caller) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                // Keep looping: the time taken does not depend on where (or whether) it matched.
                found = found.or(Some(caller));
            }
        }
        found
    }
}

fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The roles a route accepts; `None` for open routes.
pub fn roles_for(method: &str, path: &str) -> Option<&'static [Role]> {
    use Role::*;
    const CLIENTS: &[Role] = &[Client, Admin];
    const WORKERS: &[Role] = &[Worker, Admin];
    const ANYONE: &[Role] = &[Client, Worker, Admin];
    match (method, path) {
        ("GET", "/healthz") => None,
        ("GET", "/v1/openapi.json") => Some(ANYONE),
        // Workers download the modules they run.
        ("GET", "/v1/modules/{module_id}" | "/v1/modules/{module_id}/info") => Some(ANYONE),
        ("GET", "/v1/workers") | ("GET", "/metrics") => Some(CLIENTS),
        (_, p) if p.starts_with("/v1/workers") => Some(WORKERS),
        _ => Some(CLIENTS),
    }
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut response = ApiError::new(status, code, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Middleware: lets a request through only with a token of a role its route accepts.
pub async fn authenticate(
    State(state): State<Arc<Coordinator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let tokens = &state.config.tokens;
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let Some(roles) = path.as_deref().and_then(|p| roles_for(request.method().as_str(), p)) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(token) = presented else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send `Authorization: Bearer <token>` (`--token` or `HIVEMIND_TOKEN`)"
                .into(),
        );
    };
    let Some(caller) = tokens.caller_of(token.trim()).cloned() else {
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token".into());
    };
    let role = caller.role;
    if !roles.contains(&role) {
        let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a {} token may not {} {}: this route needs a {} token",
                role.as_str(),
                request.method(),
                path.unwrap_or_default(),
                wanted.join(" or ")
            ),
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_and_role() {
        let mut tokens = Tokens::default();
        tokens.add(Role::Client, "client-secret-0123456789").expect("add");
        let worker_hash = hex::encode(hash("worker-secret-0123456789"));
        let acme_hash = hex::encode(hash("acme-secret-0123456789"));
        tokens
            .add_file(&format!("# workers\nworker sha256:{worker_hash}\n\nclient {acme_hash} tenant=acme\n"))
            .expect("file");
        let role = |t: &str| tokens.caller_of(t).map(|c| c.role);
        assert_eq!(role("client-secret-0123456789"), Some(Role::Client));
        assert_eq!(role("worker-secret-0123456789"), Some(Role::Worker));
        assert_eq!(role("client-secret-012345678"), None);
        assert_eq!(role(""), None);
        let acme = tokens.caller_of("acme-secret-0123456789").expect("acme");
        assert_eq!((acme.role, acme.tenant.as_deref()), (Role::Client, Some("acme")));
        assert_eq!(tokens.caller_of("client-secret-0123456789").expect("client").tenant, None);
    }

    #[test]
    fn bad_tokens_and_files_are_refused() {
        let mut tokens = Tokens::default();
        assert!(tokens.add(Role::Admin, "short").unwrap_err().contains("at least 16"));
        assert!(tokens.add_file("admin").unwrap_err().contains("line 1"));
        assert!(tokens.add_file("boss sha256:00").unwrap_err().contains("role"));
        assert!(tokens.add_file("client sha256:xyz").unwrap_err().contains("64 hex"));
        let digest = "0".repeat(64);
        assert!(tokens.add_file(&format!("worker {digest} tenant=a")).unwrap_err().contains("only client"));
        assert!(tokens.add_file(&format!("client {digest} team=a")).unwrap_err().contains("tenant=NAME"));
        assert!(tokens.add_file(&format!("client {digest} tenant=a/b")).unwrap_err().contains("tenant=NAME"));
        assert!(tokens.is_empty(), "nothing was added");
    }

    #[test]
    fn every_route_but_health_needs_a_role() {
        for (method, path) in crate::api::ROUTES {
            let roles = roles_for(&method.to_uppercase(), path);
            assert_eq!(roles.is_none(), *path == "/healthz", "{method} {path}");
            assert!(roles.is_none_or(|r| r.contains(&Role::Admin)), "admin may do everything: {path}");
        }
        assert_eq!(roles_for("POST", "/v1/tasks"), Some(&[Role::Client, Role::Admin][..]));
        assert_eq!(
            roles_for("POST", "/v1/workers/{worker_id}/lease"),
            Some(&[Role::Worker, Role::Admin][..])
        );
    }
}
