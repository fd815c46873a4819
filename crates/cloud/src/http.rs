//! The HTTP client both APIs share: no proxy (metadata and lab addresses
//! must never be sent to a proxy from the environment), no redirects, bounded
//! time, and non-2xx answers returned rather than raised.

use std::time::Duration;

/// A plain answer: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {source}")]
pub struct HttpError {
    pub method: &'static str,
    pub url: String,
    #[source]
    pub source: Box<ureq::Error>,
}

/// Largest answer body read (bytes).
pub const MAX_BODY: u64 = 4 << 20;

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build(),
    )
}

fn finish(
    method: &'static str,
    url: &str,
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, HttpError> {
    let wrap = |source: ureq::Error| HttpError {
        method,
        url: url.to_string(),
        source: Box::new(source),
    };
    let mut resp = r.map_err(wrap)?;
    let status = resp.status().as_u16();
    // Bounded: a hostile or broken endpoint cannot make the agent hold
    // an endless answer (a node's largest real answer is tens of KiB).
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(wrap)?;
    Ok(Reply { status, body })
}

pub fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply, HttpError> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish("GET", url, req.call())
}

pub fn put(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply, HttpError> {
    let mut req = agent.put(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish("PUT", url, req.send_empty())
}

pub fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<Reply, HttpError> {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    finish("POST", url, req.send(body))
}
