//! The remote side of the CLI: talks to a `vdna-db serve` over its `/v1` API.
//!
//! Push sends only the objects the server lacks (`HEAD` first) and then sets the ref, which
//! makes the server verify and commit. Pull fetches the manifest, the space and every
//! layer, checks each digest, and hands a verified bundle to the local store, which commits
//! it in one step: an interrupted pull leaves nothing named locally.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::format::{decode_object, Bundle, Digest, Manifest, SpaceConfig};
use crate::refname::RefName;
use crate::Error;

/// A connection to one server.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// What a push moved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushSummary {
    pub digest: Digest,
    pub reference: String,
    pub uploaded: usize,
    pub skipped: usize,
    pub uploaded_bytes: u64,
    pub server: Value,
}

const MAX_RESPONSE: u64 = 1 << 30;

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: url.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Invalid(format!("remote {}: {what}: {e}", self.base))
    }

    /// Turns a response into bytes, or an error carrying the server's message.
    fn finish(
        &self,
        what: &str,
        mut r: ureq::http::Response<ureq::Body>,
    ) -> Result<Vec<u8>, Error> {
        let status = r.status();
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| self.fail(what, e))?;
        if status.is_success() {
            return Ok(body);
        }
        let msg = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let text = format!("remote {}: {what}: {status}: {msg}", self.base);
        Err(if status.as_u16() == 404 {
            Error::NotFound(text)
        } else {
            Error::Invalid(text)
        })
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get_json(&self, path: &str) -> Result<Value, Error> {
        let r = self
            .auth(self.agent.get(&self.url(path)))
            .call()
            .map_err(|e| self.fail(path, e))?;
        let b = self.finish(path, r)?;
        serde_json::from_slice(&b).map_err(|e| self.fail(path, e))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let r = self
            .auth(self.agent.post(&self.url(path)))
            .send_json(body)
            .map_err(|e| self.fail(path, e))?;
        let b = self.finish(path, r)?;
        serde_json::from_slice(&b).map_err(|e| self.fail(path, e))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let r = self
            .auth(self.agent.put(&self.url(path)))
            .send_json(body)
            .map_err(|e| self.fail(path, e))?;
        let b = self.finish(path, r)?;
        serde_json::from_slice(&b).map_err(|e| self.fail(path, e))
    }

    pub fn delete_json(&self, path: &str) -> Result<Value, Error> {
        let r = self
            .auth(self.agent.delete(&self.url(path)))
            .call()
            .map_err(|e| self.fail(path, e))?;
        let b = self.finish(path, r)?;
        serde_json::from_slice(&b).map_err(|e| self.fail(path, e))
    }

    /// Posts a `.vdna` bundle as the query DNA; `params` is the query string.
    pub fn query_bundle(&self, bundle: &[u8], params: &str) -> Result<Value, Error> {
        let path = format!("/v1/query/bundle?{params}");
        let r = self
            .auth(self.agent.post(&self.url(&path)))
            .header("Content-Type", "application/octet-stream")
            .send(bundle)
            .map_err(|e| self.fail(&path, e))?;
        let b = self.finish(&path, r)?;
        serde_json::from_slice(&b).map_err(|e| self.fail(&path, e))
    }

    fn has_blob(&self, d: &Digest) -> Result<bool, Error> {
        let path = format!("/v1/blobs/{d}");
        let r = self
            .auth(self.agent.head(&self.url(&path)))
            .call()
            .map_err(|e| self.fail(&path, e))?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            // A HEAD answer has no body to carry the server's reason: say it here.
            401 => Err(self.fail(
                &path,
                "HEAD answered 401: unknown or revoked token (give a valid one with --token or VDNA_DB_TOKEN)",
            )),
            s => Err(self.fail(&path, format!("HEAD answered {s}"))),
        }
    }

    fn get_blob(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let path = format!("/v1/blobs/{d}");
        let r = self
            .auth(self.agent.get(&self.url(&path)))
            .call()
            .map_err(|e| self.fail(&path, e))?;
        self.finish(&path, r)
    }

    /// Uploads the objects the server lacks, then sets `name` to the manifest.
    /// `objects[0]` is the manifest; the others are sent first.
    pub fn push_objects(
        &self,
        objects: &[(Digest, Vec<u8>)],
        name: &RefName,
        annotations: &BTreeMap<String, String>,
    ) -> Result<PushSummary, Error> {
        let (mut uploaded, mut skipped, mut bytes) = (0, 0, 0u64);
        for (d, enc) in objects.iter().skip(1).chain(objects.iter().take(1)) {
            if self.has_blob(d)? {
                skipped += 1;
                continue;
            }
            let path = format!("/v1/blobs/{d}");
            let r = self
                .auth(self.agent.put(&self.url(&path)))
                .header("Content-Type", "application/octet-stream")
                .send(&enc[..])
                .map_err(|e| self.fail(&path, e))?;
            self.finish(&path, r)?;
            uploaded += 1;
            bytes += enc.len() as u64;
        }
        let digest = objects[0].0;
        let path = format!("/v1/refs/{name}");
        let r = self
            .auth(self.agent.put(&self.url(&path)))
            .send_json(crate::protocol::SetRef {
                digest: digest.to_string(),
                annotations: annotations.clone(),
            })
            .map_err(|e| self.fail(&path, e))?;
        let b = self.finish(&path, r)?;
        Ok(PushSummary {
            digest,
            reference: name.to_string(),
            uploaded,
            skipped,
            uploaded_bytes: bytes,
            server: serde_json::from_slice(&b).unwrap_or(Value::Null),
        })
    }

    /// Fetches a named DNA as a bundle whose every object was checked against its digest.
    pub fn pull(&self, name: &str) -> Result<Bundle, Error> {
        let r = self.get_json(&format!("/v1/refs/{name}"))?;
        let digest: Digest = r["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.fail(name, "the ref has no digest"))?;
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(r["annotations"].clone()).unwrap_or_default();
        let fetch =
            |d: &Digest, what: &str| -> Result<(Vec<u8>, rkyv::util::AlignedVec<16>), Error> {
                let enc = self.get_blob(d)?;
                let raw = decode_object(&enc, "downloaded object")?;
                if Digest::of(&raw) != *d {
                    return Err(self.fail(what, format!("{d}: content does not match its digest")));
                }
                Ok((enc, raw))
            };
        let (menc, mraw) = fetch(&digest, "manifest")?;
        let manifest = Manifest::from_bytes(&mraw)?;
        let (senc, sraw) = fetch(&manifest.space, "space config")?;
        let space = SpaceConfig::from_bytes(&sraw)?;
        manifest.check_against(&space)?;
        let mut objects = vec![(digest, menc), (manifest.space, senc)];
        for l in &manifest.layers {
            let (enc, _) = fetch(&l.digest, &l.name)?;
            objects.push((l.digest, enc));
        }
        Ok(Bundle {
            manifest,
            manifest_digest: digest,
            space,
            objects,
            annotations,
        })
    }
}
