//! Where the AWS credentials, region and endpoints come from, the way the AWS CLI and SDKs find
//! them (the simple cases): the environment first, then the shared files.
//!
//! - Credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else the
//!   profile `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE`
//!   (default `~/.aws/credentials`). SSO, `credential_process` and instance roles are not read:
//!   export the keys they give (`aws configure export-credentials --format env`).
//! - Region: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `region` of the profile in
//!   `AWS_CONFIG_FILE` (default `~/.aws/config`, section `[profile NAME]` or `[default]`).
//! - Endpoints: `AWS_ENDPOINT_URL_EBS` / `AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL`, else
//!   `https://ebs.REGION.amazonaws.com` / `https://ec2.REGION.amazonaws.com`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{CloudError, Result};

/// Access key, secret and optional session token. `Debug` prints the key id only.
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN` (temporary credentials).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Everything needed to call EBS and EC2 in one region.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// The keys requests are signed with.
    pub credentials: Credentials,
    /// e.g. `eu-west-1`.
    pub region: String,
    /// Base URL of the EBS direct APIs (no trailing slash).
    pub ebs_endpoint: String,
    /// Base URL of the EC2 Query API (no trailing slash).
    pub ec2_endpoint: String,
}

impl AwsConfig {
    /// Read the configuration from this process's environment and the shared files.
    pub fn from_env() -> Result<AwsConfig> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        AwsConfig::from_vars(&vars, home_dir().as_deref())
    }

    /// [`AwsConfig::from_env`] over a given set of variables and home directory (for tests).
    pub fn from_vars(vars: &HashMap<String, String>, home: Option<&Path>) -> Result<AwsConfig> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let profile = get("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let in_home = |rel: &str| home.map(|h| h.join(rel));

        let credentials = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("AWS_SESSION_TOKEN"),
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(CloudError::Config(
                    "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set: set both \
                     (or neither, to use ~/.aws/credentials)"
                        .into(),
                ))
            }
            (None, None) => {
                let path = get("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| in_home(".aws/credentials"));
                let section = path
                    .as_deref()
                    .map(|p| read_ini_section(p, &profile))
                    .transpose()?
                    .flatten();
                let Some(s) = section else {
                    return Err(CloudError::Config(format!(
                        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                         (and AWS_SESSION_TOKEN for temporary ones), or put profile [{profile}] \
                         in {}",
                        path.map_or("~/.aws/credentials".into(), |p| p.display().to_string())
                    )));
                };
                match (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
                    (Some(id), Some(secret)) => Credentials {
                        access_key_id: id.clone(),
                        secret_access_key: secret.clone(),
                        session_token: s.get("aws_session_token").cloned(),
                    },
                    _ => {
                        return Err(CloudError::Config(format!(
                            "profile [{profile}] of the AWS credentials file lacks \
                             aws_access_key_id or aws_secret_access_key"
                        )))
                    }
                }
            }
        };

        let region = match get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")) {
            Some(r) => r,
            None => {
                let path = get("AWS_CONFIG_FILE")
                    .map(PathBuf::from)
                    .or_else(|| in_home(".aws/config"));
                let section_name = if profile == "default" {
                    "default".to_string()
                } else {
                    format!("profile {profile}")
                };
                path.as_deref()
                    .map(|p| read_ini_section(p, &section_name))
                    .transpose()?
                    .flatten()
                    .and_then(|s| s.get("region").cloned())
                    .ok_or_else(|| {
                        CloudError::Config(
                            "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or region in \
                             ~/.aws/config)"
                                .into(),
                        )
                    })?
            }
        };
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(CloudError::Config(format!(
                "AWS region {region:?} is not a region name (like eu-west-1)"
            )));
        }

        let endpoint = |service: &str, var: &str| -> Result<String> {
            let url = get(var)
                .or_else(|| get("AWS_ENDPOINT_URL"))
                .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"));
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(CloudError::Config(format!(
                    "{var}/AWS_ENDPOINT_URL {url:?} is not an http(s) URL"
                )));
            }
            Ok(url.trim_end_matches('/').to_string())
        };
        Ok(AwsConfig {
            ebs_endpoint: endpoint("ebs", "AWS_ENDPOINT_URL_EBS")?,
            ec2_endpoint: endpoint("ec2", "AWS_ENDPOINT_URL_EC2")?,
            credentials,
            region,
        })
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The `key = value` lines of `[section]` in an INI file; `None` when the file or the section is
/// absent.
fn read_ini_section(path: &Path, section: &str) -> Result<Option<HashMap<String, String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CloudError::Io {
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    let mut current: Option<&str> = None;
    let mut found: Option<HashMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
            if current == Some(section) {
                found.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if current == Some(section) {
            if let Some((k, v)) = line.split_once('=') {
                found
                    .get_or_insert_with(HashMap::new)
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_wins_and_endpoints_default_to_the_region() {
        let c = AwsConfig::from_vars(
            &vars(&[
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "SECRETVALUE"),
                ("AWS_SESSION_TOKEN", "TOKENVALUE"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.ebs_endpoint, "https://ebs.eu-west-1.amazonaws.com");
        assert_eq!(c.ec2_endpoint, "https://ec2.eu-west-1.amazonaws.com");
        assert_eq!(c.credentials.session_token.as_deref(), Some("TOKENVALUE"));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("SECRETVALUE") && !dbg.contains("TOKENVALUE"),
            "{dbg}"
        );

        let c = AwsConfig::from_vars(
            &vars(&[
                ("AWS_ACCESS_KEY_ID", "A"),
                ("AWS_SECRET_ACCESS_KEY", "S"),
                ("AWS_REGION", "us-east-2"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9/"),
                ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:8"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.region, "us-east-2");
        assert_eq!(c.ebs_endpoint, "http://127.0.0.1:9");
        assert_eq!(c.ec2_endpoint, "http://127.0.0.1:8");
    }

    #[test]
    fn shared_files_give_profile_credentials_and_region() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [lab]\n# comment\naws_access_key_id=L\naws_secret_access_key=LS\naws_session_token=LT\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[default]\nregion = eu-central-1\n[profile lab]\nregion = ap-south-1\n",
        )
        .unwrap();
        let c = AwsConfig::from_vars(&vars(&[]), Some(home.path())).unwrap();
        assert_eq!(c.credentials.access_key_id, "D");
        assert_eq!(c.region, "eu-central-1");
        let c = AwsConfig::from_vars(&vars(&[("AWS_PROFILE", "lab")]), Some(home.path())).unwrap();
        assert_eq!(c.credentials.access_key_id, "L");
        assert_eq!(c.credentials.session_token.as_deref(), Some("LT"));
        assert_eq!(c.region, "ap-south-1");
    }

    #[test]
    fn missing_or_half_settings_are_clear_errors() {
        let e = AwsConfig::from_vars(&vars(&[("AWS_REGION", "eu-west-1")]), None).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        let e = AwsConfig::from_vars(&vars(&[("AWS_ACCESS_KEY_ID", "A")]), None).unwrap_err();
        assert!(e.to_string().contains("only one of"), "{e}");
        let e = AwsConfig::from_vars(
            &vars(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS_REGION"), "{e}");
        let e = AwsConfig::from_vars(
            &vars(&[
                ("AWS_ACCESS_KEY_ID", "A"),
                ("AWS_SECRET_ACCESS_KEY", "S"),
                ("AWS_REGION", "Bad Region"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a region name"), "{e}");
    }
}
