//! Where a cloud's endpoints and token come from.
//!
//! Two modes, chosen the way the OpenStack tools choose them:
//! - **Keystone v3 password** (`OS_AUTH_URL`, `OS_USERNAME`/`OS_USER_ID`, `OS_PASSWORD`,
//!   `OS_PROJECT_NAME`/`OS_PROJECT_ID`, `OS_USER_DOMAIN_NAME`, `OS_PROJECT_DOMAIN_NAME`,
//!   `OS_REGION_NAME`, `OS_INTERFACE`; or `OS_CLOUD` naming an entry of `clouds.yaml`):
//!   `POST /v3/auth/tokens`, the token from the `X-Subject-Token` header, Cinder and Nova
//!   endpoints from the catalog in the body. A `401` later re-authenticates once (tokens expire
//!   during long ingests).
//! - **No auth** (`OS_AUTH_TYPE=noauth` or `none`), for labs running Cinder with
//!   `noauth_include_project_id` and Nova with `noauth2`: every request carries
//!   `X-Auth-Token: <user>:<project>`; the endpoints come from `OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE`
//!   (with the project id in it: `http://127.0.0.1:8776/v3/<project>`) and
//!   `OS_COMPUTE_ENDPOINT_OVERRIDE`. Cinder wants a hex project id there.
//!
//! `*_ENDPOINT_OVERRIDE` (and `block_storage_endpoint_override` / `compute_endpoint_override` in
//! clouds.yaml) also override the catalog under Keystone.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;

use crate::http::{Http, Reply};

use crate::{CloudError, Result};

/// How to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No Keystone: a `user:project` token the services take at face value.
    NoAuth(NoAuth),
    /// Keystone v3 password authentication.
    Keystone(Keystone),
}

/// Settings of the no-auth mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAuth {
    /// User id put in the token (`admin` in the lab).
    pub user: String,
    /// Project id (hex for Cinder's `noauth_include_project_id`).
    pub project: String,
    /// Explicit endpoints (there is no catalog without Keystone).
    pub endpoints: Endpoints,
}

/// Settings of Keystone v3 password authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Keystone {
    /// Identity endpoint, with or without `/v3`.
    pub auth_url: String,
    /// User name (with `user_domain`) or...
    pub username: Option<String>,
    /// ... user id.
    pub user_id: Option<String>,
    /// The password (never printed by `Debug`).
    pub password: String,
    /// Domain of the user name (`Default` when unset).
    pub user_domain: String,
    /// Project name (with `project_domain`) or...
    pub project_name: Option<String>,
    /// ... project id.
    pub project_id: Option<String>,
    /// Domain of the project name (`Default` when unset).
    pub project_domain: String,
    /// Region to pick endpoints in; any region when unset.
    pub region: Option<String>,
    /// Endpoint interface: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// Endpoints that override the catalog's.
    pub overrides: Endpoints,
}

impl fmt::Debug for Keystone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystone")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("password", &"<redacted>")
            .field("user_domain", &self.user_domain)
            .field("project_name", &self.project_name)
            .field("project_id", &self.project_id)
            .field("project_domain", &self.project_domain)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .field("overrides", &self.overrides)
            .finish()
    }
}

/// Service endpoints (base URLs, no trailing slash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Cinder v3, including the project id when the deployment puts it in URLs.
    pub volume: Option<String>,
    /// Nova v2.1.
    pub compute: Option<String>,
}

/// Which service a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Volume,
    Compute,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Volume => "Cinder (block-storage)",
            Service::Compute => "Nova (compute)",
        }
    }
}

fn trim_url(u: &str) -> String {
    u.trim().trim_end_matches('/').to_string()
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Auth {
    /// From the process environment (see the module doc); `OS_CLOUD` selects clouds.yaml.
    pub fn from_env() -> Result<Auth> {
        Auth::from_vars(|k| std::env::var(k).ok())
    }

    /// Like [`Auth::from_env`] with the variables from `get` (tests, or a saved env file).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Auth> {
        let var = |k: &str| nonempty(get(k));
        let overrides = Endpoints {
            volume: var("OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE")
                .or_else(|| var("OS_VOLUME_ENDPOINT_OVERRIDE"))
                .map(|u| trim_url(&u)),
            compute: var("OS_COMPUTE_ENDPOINT_OVERRIDE").map(|u| trim_url(&u)),
        };
        if let Some(cloud) = var("OS_CLOUD") {
            let file = var("OS_CLIENT_CONFIG_FILE").map(PathBuf::from);
            let mut auth = Auth::from_clouds_yaml(file.as_deref(), &cloud)?;
            // The environment's overrides win over the file's, as in openstacksdk.
            let eps = match &mut auth {
                Auth::NoAuth(n) => &mut n.endpoints,
                Auth::Keystone(k) => &mut k.overrides,
            };
            if overrides.volume.is_some() {
                eps.volume = overrides.volume;
            }
            if overrides.compute.is_some() {
                eps.compute = overrides.compute;
            }
            return Ok(auth);
        }
        let auth_type = var("OS_AUTH_TYPE").unwrap_or_else(|| "password".to_string());
        match auth_type.as_str() {
            "noauth" | "none" | "noauth2" => {
                let project = var("OS_PROJECT_ID").ok_or_else(|| {
                    CloudError::Config(
                        "OS_AUTH_TYPE=noauth needs OS_PROJECT_ID (the lab prints it: \
                         eval \"$(scripts/cloud-lab.sh env)\")"
                            .into(),
                    )
                })?;
                if overrides.volume.is_none() && overrides.compute.is_none() {
                    return Err(CloudError::Config(
                        "OS_AUTH_TYPE=noauth has no catalog: set OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE \
                         and/or OS_COMPUTE_ENDPOINT_OVERRIDE"
                            .into(),
                    ));
                }
                Ok(Auth::NoAuth(NoAuth {
                    user: var("OS_USER_ID").unwrap_or_else(|| "admin".into()),
                    project,
                    endpoints: overrides,
                }))
            }
            "password" | "v3password" => {
                let auth_url = var("OS_AUTH_URL").ok_or_else(|| {
                    CloudError::Config(
                        "no cloud configured: set OS_CLOUD (clouds.yaml), or OS_AUTH_URL, \
                         OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME (Keystone), or \
                         OS_AUTH_TYPE=noauth with OS_PROJECT_ID and endpoint overrides"
                            .into(),
                    )
                })?;
                Keystone::build(
                    auth_url,
                    var("OS_USERNAME"),
                    var("OS_USER_ID"),
                    var("OS_PASSWORD"),
                    var("OS_USER_DOMAIN_NAME").or_else(|| var("OS_USER_DOMAIN_ID")),
                    var("OS_PROJECT_NAME").or_else(|| var("OS_TENANT_NAME")),
                    var("OS_PROJECT_ID").or_else(|| var("OS_TENANT_ID")),
                    var("OS_PROJECT_DOMAIN_NAME").or_else(|| var("OS_PROJECT_DOMAIN_ID")),
                    var("OS_REGION_NAME"),
                    var("OS_INTERFACE"),
                    overrides,
                )
                .map(Auth::Keystone)
            }
            other => Err(CloudError::Config(format!(
                "OS_AUTH_TYPE={other} is not supported: use password (Keystone v3) or noauth"
            ))),
        }
    }

    /// Read entry `cloud` of a clouds.yaml: `file`, or the first of `./clouds.yaml`,
    /// `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml` that exists.
    /// (`secure.yaml` is not merged: put the password in clouds.yaml or `OS_PASSWORD`.)
    pub fn from_clouds_yaml(file: Option<&Path>, cloud: &str) -> Result<Auth> {
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => clouds_yaml_candidates()
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    CloudError::Config(format!(
                        "OS_CLOUD={cloud} but no clouds.yaml in ./, ~/.config/openstack/ or \
                         /etc/openstack/ (or set OS_CLIENT_CONFIG_FILE)"
                    ))
                })?,
        };
        let text = read_capped(&path)?;
        Auth::parse_clouds_yaml(&text, cloud, &path.display().to_string())
    }

    /// Parse clouds.yaml `text` (named `origin` in errors) and take entry `cloud`.
    pub fn parse_clouds_yaml(text: &str, cloud: &str, origin: &str) -> Result<Auth> {
        let doc: Yaml = serde_yaml_ng::from_str(text)
            .map_err(|e| CloudError::Config(format!("{origin} is not valid YAML: {e}")))?;
        let entry = doc
            .get("clouds")
            .and_then(|c| c.get(cloud))
            .ok_or_else(|| CloudError::Config(format!("{origin} has no cloud named {cloud:?}")))?;
        let s = |v: Option<&Yaml>| -> Option<String> {
            nonempty(v.and_then(|v| match v {
                Yaml::String(s) => Some(s.clone()),
                Yaml::Number(n) => Some(n.to_string()),
                _ => None,
            }))
        };
        let a = entry.get("auth");
        let af = |k: &str| s(a.and_then(|a| a.get(k)));
        let ef = |k: &str| s(entry.get(k));
        let endpoints = Endpoints {
            volume: ef("block_storage_endpoint_override")
                .or_else(|| ef("volume_endpoint_override"))
                .map(|u| trim_url(&u)),
            compute: ef("compute_endpoint_override").map(|u| trim_url(&u)),
        };
        let auth_type = ef("auth_type").unwrap_or_else(|| "password".into());
        match auth_type.as_str() {
            "noauth" | "none" | "noauth2" => Ok(Auth::NoAuth(NoAuth {
                user: af("user_id").unwrap_or_else(|| "admin".into()),
                project: af("project_id").ok_or_else(|| {
                    CloudError::Config(format!(
                        "{origin}: cloud {cloud:?} (auth_type {auth_type}) needs auth.project_id"
                    ))
                })?,
                endpoints,
            })),
            "password" | "v3password" => {
                let auth_url = af("auth_url").ok_or_else(|| {
                    CloudError::Config(format!("{origin}: cloud {cloud:?} has no auth.auth_url"))
                })?;
                Keystone::build(
                    auth_url,
                    af("username"),
                    af("user_id"),
                    af("password").or_else(|| std::env::var("OS_PASSWORD").ok()),
                    af("user_domain_name")
                        .or_else(|| af("user_domain_id"))
                        .or_else(|| af("domain_name")),
                    af("project_name").or_else(|| af("tenant_name")),
                    af("project_id").or_else(|| af("tenant_id")),
                    af("project_domain_name")
                        .or_else(|| af("project_domain_id"))
                        .or_else(|| af("domain_name")),
                    ef("region_name"),
                    ef("interface"),
                    endpoints,
                )
                .map(Auth::Keystone)
            }
            other => Err(CloudError::Config(format!(
                "{origin}: cloud {cloud:?} uses auth_type {other}: only password (Keystone v3) \
                 and noauth are supported"
            ))),
        }
    }
}

fn clouds_yaml_candidates() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("clouds.yaml")];
    if let Some(home) = std::env::var_os("HOME") {
        v.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    v.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    v
}

/// clouds.yaml is a few KiB; a huge file is a mistake, not a config.
fn read_capped(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| CloudError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut text = String::new();
    let n = std::fs::File::open(path)
        .map_err(io)?
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(io)?;
    if n >= 1 << 20 {
        return Err(CloudError::Config(format!(
            "{} is larger than 1 MiB: not a clouds.yaml",
            path.display()
        )));
    }
    Ok(text)
}

impl Keystone {
    #[allow(clippy::too_many_arguments)]
    fn build(
        auth_url: String,
        username: Option<String>,
        user_id: Option<String>,
        password: Option<String>,
        user_domain: Option<String>,
        project_name: Option<String>,
        project_id: Option<String>,
        project_domain: Option<String>,
        region: Option<String>,
        interface: Option<String>,
        overrides: Endpoints,
    ) -> Result<Keystone> {
        if username.is_none() && user_id.is_none() {
            return Err(CloudError::Config(
                "Keystone auth needs a user: set OS_USERNAME (or OS_USER_ID)".into(),
            ));
        }
        let password = password.ok_or_else(|| {
            CloudError::Config("Keystone auth needs OS_PASSWORD (or auth.password)".into())
        })?;
        if project_name.is_none() && project_id.is_none() {
            return Err(CloudError::Config(
                "Keystone auth needs a project scope: set OS_PROJECT_NAME or OS_PROJECT_ID".into(),
            ));
        }
        let interface = interface
            .unwrap_or_else(|| "public".into())
            .trim_end_matches("URL")
            .to_string();
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(CloudError::Config(format!(
                "OS_INTERFACE={interface}: use public, internal or admin"
            )));
        }
        Ok(Keystone {
            auth_url: trim_url(&auth_url),
            username,
            user_id,
            password,
            user_domain: user_domain.unwrap_or_else(|| "Default".into()),
            project_name,
            project_id,
            project_domain: project_domain.unwrap_or_else(|| "Default".into()),
            region,
            interface,
            overrides,
        })
    }

    /// `POST /v3/auth/tokens` body.
    fn token_request(&self) -> Value {
        // A domain given as an id ("default") or a name ("Default"): Keystone takes either key;
        // ids are lower-case hex or "default", names are what people type.
        let domain = |d: &str| {
            if d == "default" || (d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit())) {
                json!({ "id": d })
            } else {
                json!({ "name": d })
            }
        };
        let user = match (&self.user_id, &self.username) {
            (Some(id), _) => json!({ "id": id, "password": self.password }),
            (None, Some(name)) => json!({
                "name": name,
                "domain": domain(&self.user_domain),
                "password": self.password,
            }),
            (None, None) => unreachable!("Keystone::build requires a user"),
        };
        let project = match (&self.project_id, &self.project_name) {
            (Some(id), _) => json!({ "id": id }),
            (None, Some(name)) => json!({ "name": name, "domain": domain(&self.project_domain) }),
            (None, None) => unreachable!("Keystone::build requires a project"),
        };
        json!({
            "auth": {
                "identity": { "methods": ["password"], "password": { "user": user } },
                "scope": { "project": project },
            }
        })
    }

    fn tokens_url(&self) -> String {
        if self.auth_url.ends_with("/v3") {
            format!("{}/auth/tokens", self.auth_url)
        } else {
            format!("{}/v3/auth/tokens", self.auth_url)
        }
    }
}

/// Pick the endpoint of one of `types` from a Keystone v3 catalog.
fn from_catalog(
    catalog: &[Value],
    types: &[&str],
    interface: &str,
    region: Option<&str>,
    project_id: &str,
) -> Option<String> {
    for ty in types {
        for svc in catalog {
            if svc.get("type").and_then(Value::as_str) != Some(*ty) {
                continue;
            }
            let eps = svc.get("endpoints").and_then(Value::as_array);
            for ep in eps.into_iter().flatten() {
                let field = |k: &str| ep.get(k).and_then(Value::as_str);
                if field("interface") != Some(interface) {
                    continue;
                }
                if let Some(r) = region {
                    if field("region_id") != Some(r) && field("region") != Some(r) {
                        continue;
                    }
                }
                if let Some(url) = field("url") {
                    // Old catalogs keep the template (`.../v3/%(project_id)s`).
                    let url = url
                        .replace("%(project_id)s", project_id)
                        .replace("%(tenant_id)s", project_id)
                        .replace("$(project_id)s", project_id)
                        .replace("$(tenant_id)s", project_id);
                    return Some(trim_url(&url));
                }
            }
        }
    }
    None
}

/// An authenticated connection to one cloud: token, project and endpoints.
#[derive(Debug)]
pub struct Session {
    http: Http,
    auth: Auth,
    token: Mutex<String>,
    project_id: String,
    endpoints: Endpoints,
}

impl Session {
    /// Authenticate (Keystone) or just assemble the no-auth token. `timeout` bounds each request.
    pub fn connect(auth: Auth, timeout: Duration) -> Result<Session> {
        let http = Http::new(timeout);
        match &auth {
            Auth::NoAuth(n) => {
                if n.project.contains(':') || n.user.contains(':') {
                    return Err(CloudError::Config(
                        "no-auth user and project ids must not contain ':'".into(),
                    ));
                }
                Ok(Session {
                    token: Mutex::new(format!("{}:{}", n.user, n.project)),
                    project_id: n.project.clone(),
                    endpoints: n.endpoints.clone(),
                    http,
                    auth,
                })
            }
            Auth::Keystone(k) => {
                let (token, project_id, endpoints) = keystone_login(&http, k)?;
                Ok(Session {
                    token: Mutex::new(token),
                    project_id,
                    endpoints,
                    http,
                    auth,
                })
            }
        }
    }

    /// The project the session is scoped to.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn endpoint(&self, service: Service) -> Result<&str> {
        let ep = match service {
            Service::Volume => &self.endpoints.volume,
            Service::Compute => &self.endpoints.compute,
        };
        ep.as_deref().ok_or_else(|| {
            CloudError::Config(format!(
                "no endpoint for {}: not in the catalog; set OS_{}_ENDPOINT_OVERRIDE",
                service.name(),
                match service {
                    Service::Volume => "BLOCK_STORAGE",
                    Service::Compute => "COMPUTE",
                }
            ))
        })
    }

    /// One request to `service` at `path` (relative to its endpoint, starting with `/`).
    pub(crate) fn call(
        &self,
        service: Service,
        method: &str,
        path: &str,
        microversion: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let url = format!("{}{}", self.endpoint(service)?, path);
        let send = |token: &str| {
            let mut headers: Vec<(&str, String)> = vec![("X-Auth-Token", token.to_string())];
            if let Some(mv) = microversion {
                let name = match service {
                    Service::Volume => "volume",
                    Service::Compute => "compute",
                };
                headers.push(("OpenStack-API-Version", format!("{name} {mv}")));
                if service == Service::Compute {
                    headers.push(("X-OpenStack-Nova-API-Version", mv.to_string()));
                }
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.http.send(method, &url, &h, body)
        };
        let token = self.token();
        match send(&token) {
            Err(CloudError::Http { status: 401, .. }) if matches!(self.auth, Auth::Keystone(_)) => {
                // Expired or revoked token: log in again once, then give up.
                let Auth::Keystone(k) = &self.auth else {
                    unreachable!()
                };
                let (fresh, _, _) = keystone_login(&self.http, k)?;
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                send(&fresh)
            }
            other => other,
        }
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn keystone_login(http: &Http, k: &Keystone) -> Result<(String, String, Endpoints)> {
    let url = k.tokens_url();
    let reply = http.send("POST", &url, &[], Some(&k.token_request()))?;
    let bad = |detail: &str| CloudError::BadResponse {
        what: format!("POST {url}"),
        detail: detail.to_string(),
    };
    let token = reply
        .subject_token
        .clone()
        .ok_or_else(|| bad("no X-Subject-Token header"))?;
    let body = reply
        .body
        .get("token")
        .ok_or_else(|| bad("no \"token\" in the body"))?;
    let project_id = body
        .get("project")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the token is not scoped to a project"))?
        .to_string();
    let empty = Vec::new();
    let catalog = body
        .get("catalog")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let region = k.region.as_deref();
    let endpoints = Endpoints {
        volume: k.overrides.volume.clone().or_else(|| {
            from_catalog(
                catalog,
                &["block-storage", "volumev3", "volume"],
                &k.interface,
                region,
                &project_id,
            )
        }),
        compute: k
            .overrides
            .compute
            .clone()
            .or_else(|| from_catalog(catalog, &["compute"], &k.interface, region, &project_id)),
    };
    Ok((token, project_id, endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn noauth_from_env_takes_project_and_overrides() {
        let a = Auth::from_vars(vars(&[
            ("OS_AUTH_TYPE", "noauth"),
            ("OS_PROJECT_ID", "0123abcd"),
            (
                "OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE",
                "http://127.0.0.1:8776/v3/0123abcd/",
            ),
            ("OS_COMPUTE_ENDPOINT_OVERRIDE", "http://127.0.0.1:8774/v2.1"),
        ]))
        .unwrap();
        assert_eq!(
            a,
            Auth::NoAuth(NoAuth {
                user: "admin".into(),
                project: "0123abcd".into(),
                endpoints: Endpoints {
                    volume: Some("http://127.0.0.1:8776/v3/0123abcd".into()),
                    compute: Some("http://127.0.0.1:8774/v2.1".into()),
                },
            })
        );
    }

    #[test]
    fn missing_settings_say_what_to_set() {
        let e = Auth::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(e.contains("OS_AUTH_URL") && e.contains("OS_CLOUD"), "{e}");
        let e = Auth::from_vars(vars(&[("OS_AUTH_TYPE", "noauth")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OS_PROJECT_ID"), "{e}");
        let e = Auth::from_vars(vars(&[
            ("OS_AUTH_URL", "https://keystone:5000"),
            ("OS_USERNAME", "u"),
            ("OS_PROJECT_NAME", "p"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("OS_PASSWORD"), "{e}");
        let e = Auth::from_vars(vars(&[("OS_AUTH_TYPE", "v3oidcpassword")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn keystone_from_env_builds_a_scoped_password_request() {
        let a = Auth::from_vars(vars(&[
            ("OS_AUTH_URL", "https://keystone.example:5000/v3/"),
            ("OS_USERNAME", "migrator"),
            ("OS_PASSWORD", "s3cret"),
            ("OS_PROJECT_NAME", "tenant-a"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_INTERFACE", "internalURL"),
        ]))
        .unwrap();
        let Auth::Keystone(k) = a else {
            panic!("expected Keystone, got {a:?}")
        };
        assert_eq!(
            k.tokens_url(),
            "https://keystone.example:5000/v3/auth/tokens"
        );
        assert_eq!(k.interface, "internal");
        assert_eq!(
            k.token_request(),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "migrator", "domain": {"name": "Default"}, "password": "s3cret"}}},
                "scope": {"project": {"name": "tenant-a", "domain": {"id": "default"}}}
            }})
        );
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn clouds_yaml_entries_parse_and_env_overrides_win() {
        let yaml = r#"
clouds:
  lab:
    auth_type: noauth
    auth:
      project_id: "0123abcd"
    block_storage_endpoint_override: http://127.0.0.1:8776/v3/0123abcd
  prod:
    region_name: RegionTwo
    auth:
      auth_url: https://id.example/
      username: m
      password: pw
      project_id: 9f
"#;
        let lab = Auth::parse_clouds_yaml(yaml, "lab", "clouds.yaml").unwrap();
        assert_eq!(
            lab,
            Auth::NoAuth(NoAuth {
                user: "admin".into(),
                project: "0123abcd".into(),
                endpoints: Endpoints {
                    volume: Some("http://127.0.0.1:8776/v3/0123abcd".into()),
                    compute: None,
                },
            })
        );
        let Auth::Keystone(k) = Auth::parse_clouds_yaml(yaml, "prod", "clouds.yaml").unwrap()
        else {
            panic!("prod is Keystone")
        };
        assert_eq!(k.tokens_url(), "https://id.example/v3/auth/tokens");
        assert_eq!(k.region.as_deref(), Some("RegionTwo"));
        assert_eq!(
            k.token_request()["auth"]["scope"],
            json!({"project": {"id": "9f"}})
        );
        let e = Auth::parse_clouds_yaml(yaml, "nope", "clouds.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no cloud named \"nope\""), "{e}");
        assert!(Auth::parse_clouds_yaml("clouds: [", "lab", "x").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clouds.yaml");
        std::fs::write(&file, yaml).unwrap();
        let a = Auth::from_vars(vars(&[
            ("OS_CLOUD", "lab"),
            ("OS_CLIENT_CONFIG_FILE", file.to_str().unwrap()),
            ("OS_COMPUTE_ENDPOINT_OVERRIDE", "http://nova:8774/v2.1"),
        ]))
        .unwrap();
        let Auth::NoAuth(n) = a else {
            panic!("lab is noauth")
        };
        assert_eq!(
            n.endpoints.compute.as_deref(),
            Some("http://nova:8774/v2.1")
        );
        assert_eq!(
            n.endpoints.volume.as_deref(),
            Some("http://127.0.0.1:8776/v3/0123abcd")
        );
    }

    #[test]
    fn keystone_session_takes_token_header_and_catalog_and_reauths_on_401() {
        use crate::testserver::{Canned, TestServer};
        let token_body = |base: &str| {
            json!({"token": {"project": {"id": "p42"}, "catalog": [
                {"type": "volumev3", "endpoints": [
                    {"interface": "public", "region_id": "R1", "url": format!("{base}/v3/p42")}]},
                {"type": "compute", "endpoints": [
                    {"interface": "public", "region_id": "R1", "url": format!("{base}/v2.1")}]}]}})
        };
        // The catalog points back at the double itself.
        let srv = TestServer::start_with(|url| {
            vec![
                Canned::json(201, token_body(url)).header("X-Subject-Token", "tok-1"),
                Canned::json(401, json!({"error": {"message": "expired"}})),
                Canned::json(201, token_body(url)).header("X-Subject-Token", "tok-2"),
                Canned::json(
                    200,
                    json!({"volume": {"id": "v", "status": "available", "size": 1}}),
                ),
            ]
        });
        let auth = Auth::from_vars(vars(&[
            ("OS_AUTH_URL", &format!("{}/identity", srv.url())),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "p"),
            ("OS_REGION_NAME", "R1"),
        ]))
        .unwrap();
        let s = Session::connect(auth, Duration::from_secs(5)).unwrap();
        assert_eq!(s.project_id(), "p42");
        assert_eq!(s.endpoints().volume, Some(format!("{}/v3/p42", srv.url())));
        let v = crate::Cinder::new(&s).get("v").unwrap();
        assert_eq!(v.status, "available");
        let reqs = srv.requests();
        let seen: Vec<(&str, &str, Option<&str>)> = reqs
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.header("x-auth-token")))
            .collect();
        assert_eq!(
            seen,
            [
                ("POST", "/identity/v3/auth/tokens", None),
                ("GET", "/v3/p42/volumes/v", Some("tok-1")),
                ("POST", "/identity/v3/auth/tokens", None),
                ("GET", "/v3/p42/volumes/v", Some("tok-2")),
            ]
        );
        assert_eq!(
            reqs[0].json()["auth"]["identity"]["password"]["user"]["password"],
            "pw"
        );
    }

    #[test]
    fn catalog_lookup_honours_type_order_interface_region_and_templates() {
        let catalog = vec![
            json!({"type": "volumev3", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "https://c1/v3/%(project_id)s"},
                {"interface": "public", "region_id": "R2", "url": "https://c2/v3/p"},
                {"interface": "internal", "region_id": "R1", "url": "http://c1-int/v3/p"}]}),
            json!({"type": "block-storage", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "https://bs1/v3/"}]}),
            json!({"type": "compute", "endpoints": [
                {"interface": "public", "region": "R2", "url": "https://n2/v2.1"}]}),
        ];
        let vol = ["block-storage", "volumev3", "volume"];
        assert_eq!(
            from_catalog(&catalog, &vol, "public", Some("R1"), "p").as_deref(),
            Some("https://bs1/v3")
        );
        assert_eq!(
            from_catalog(&catalog, &vol, "public", Some("R2"), "p").as_deref(),
            Some("https://c2/v3/p")
        );
        assert_eq!(
            from_catalog(&catalog, &["volumev3"], "public", Some("R1"), "abc").as_deref(),
            Some("https://c1/v3/abc")
        );
        assert_eq!(
            from_catalog(&catalog, &["compute"], "public", Some("R2"), "p").as_deref(),
            Some("https://n2/v2.1")
        );
        assert_eq!(
            from_catalog(&catalog, &["compute"], "public", Some("R1"), "p"),
            None
        );
    }
}
