//! A running service, from the command line: where it is, the key to it, and one way of
//! calling it that every client command shares (`submit`, `ls`, `show`, `follow`,
//! `cancel`, `download`, `compare`, `sweep`, `datasets upload`).
//!
//! Blocking `ureq`: a command does one thing at a time, and a runtime would buy nothing.
//! A refusal is never a bare status code: the problem document's detail and each field
//! at fault are printed ([`problem_text`]) and the command exits non-zero.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The service.
    #[arg(
        long,
        env = "TRAINYARD_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// An API key of the service (when it requires keys).
    #[arg(long, env = "TRAINYARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file whose first line is the API key, used when no --api-key is given (the
    /// compose service points it at the first admin key).
    #[arg(long, env = "TRAINYARD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

/// Where the key a request carries came from, to say which one a 401 refused.
enum KeySource {
    None,
    Given,
    File(PathBuf, Result<(), String>),
}

impl Remote {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    /// An agent that waits 10 s to connect and, unless `read` says otherwise, 60 s for a
    /// response.
    pub fn agent(&self, read: Option<Duration>) -> ureq::Agent {
        let mut b = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10));
        if let Some(r) = read {
            b = b.timeout_read(r);
        }
        b.build()
    }

    /// The key: --api-key, else the first line of --api-key-file.
    fn key(&self) -> (Option<String>, KeySource) {
        if let Some(k) = &self.api_key {
            return (Some(k.clone()), KeySource::Given);
        }
        let Some(file) = &self.api_key_file else {
            return (None, KeySource::None);
        };
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let key = text.lines().next().unwrap_or("").trim().to_string();
                (Some(key), KeySource::File(file.clone(), Ok(())))
            }
            Err(e) => (None, KeySource::File(file.clone(), Err(e.to_string()))),
        }
    }

    /// `req` with the key, if any.
    pub fn authorize(&self, req: ureq::Request) -> ureq::Request {
        match self.key().0 {
            Some(key) => req.set("Authorization", &format!("Bearer {key}")),
            None => req,
        }
    }

    /// A request with the key, if any.
    pub fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        self.authorize(agent.request(method, &self.url(path)))
    }

    /// The error for a refusal of `what` with `code`: the problem, field by field; for a
    /// 401, which key was refused and how to give one (the server's own text speaks of
    /// HTTP headers, which a command-line user never wrote).
    pub fn refusal(&self, what: &str, code: u16, r: ureq::Response) -> anyhow::Error {
        let text = r.into_string().unwrap_or_default();
        if code != 401 {
            return anyhow::anyhow!("{what} answered {code}: {}", problem_text(&text));
        }
        let why = match self.key().1 {
            KeySource::None => "this service needs an API key: pass --api-key KEY or set \
                TRAINYARD_API_KEY (or name a file holding it with --api-key-file or \
                TRAINYARD_API_KEY_FILE)"
                .to_string(),
            KeySource::Given => "the key from --api-key (or TRAINYARD_API_KEY) is unknown \
                or revoked"
                .to_string(),
            KeySource::File(f, Ok(())) => format!(
                "the key in {} (--api-key-file or TRAINYARD_API_KEY_FILE) is unknown or \
                 revoked",
                f.display()
            ),
            KeySource::File(f, Err(e)) => format!(
                "no key was sent: {} (--api-key-file or TRAINYARD_API_KEY_FILE) could not \
                 be read: {e}",
                f.display()
            ),
        };
        anyhow::anyhow!(
            "{what} answered 401: {why}. An admin makes keys with `trainyard keys create \
             --account NAME`."
        )
    }

    /// Sends `req` (with `body` as JSON when given); a refusal becomes an error that
    /// carries the problem, field by field.
    pub fn send(&self, req: ureq::Request, body: Option<&Value>) -> anyhow::Result<ureq::Response> {
        let what = format!("{} {}", req.method(), req.url());
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => Err(self.refusal(&what, code, r)),
            Err(e) => Err(anyhow::Error::new(e).context(what)),
        }
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let agent = self.agent(Some(Duration::from_secs(60)));
        let r = self.send(self.request(&agent, "GET", path), None)?;
        serde_json::from_reader(r.into_reader()).with_context(|| format!("reading {path}"))
    }

    /// Saves a picture the service draws as `out`, which names its format: `path` is
    /// the picture's path without the extension (`/compare`), `query` its query.
    pub fn save_picture(
        &self,
        path: &str,
        query: &str,
        out: &std::path::Path,
    ) -> anyhow::Result<()> {
        let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
        anyhow::ensure!(
            ext == "svg" || ext == "png",
            "--out must end in .svg or .png, got {}",
            out.display()
        );
        let agent = self.agent(Some(Duration::from_secs(60)));
        let r = self.send(
            self.request(&agent, "GET", &format!("{path}.{ext}?{query}")),
            None,
        )?;
        let mut file = std::fs::File::create(out)?;
        std::io::copy(&mut r.into_reader(), &mut file)?;
        Ok(())
    }

    /// `method path` with a JSON body (or none), the answer as JSON.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let agent = self.agent(Some(Duration::from_secs(60)));
        let r = self.send(self.request(&agent, method, path), body)?;
        serde_json::from_reader(r.into_reader()).with_context(|| format!("reading {path}"))
    }
}

/// A problem document's detail, field by field.
pub fn problem_text(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    let mut out = v["detail"].as_str().unwrap_or(text).to_string();
    for e in v["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {}: {}",
            e["field"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        ));
    }
    out
}
