//! Recordings to S3-compatible object storage (`--recording-url s3://bucket/prefix`): a
//! finished WAV file in the recording directory (the spool) is uploaded with S3 multipart
//! upload (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html>) through
//! the `object_store` crate, then removed locally. Credentials, region and endpoint come from
//! the usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), the endpoint
//! also from `--recording-s3-endpoint` (path-style requests, for MinIO, moto, s3s and the
//! like).
//!
//! Each upload is retried by `object_store` per request ([`REQUEST_RETRIES`]) and as a whole
//! up to [`UPLOAD_ATTEMPTS`] times (backoff from [`UPLOAD_BACKOFF`], ×2); a file that could
//! not be uploaded stays in the spool directory, counted in
//! `relay_recording_uploads_total{result="failed"}`. At most [`MAX_UPLOADS`] run at once, each
//! with at most two parts of [`PART_BYTES`] in memory.

use crate::obs::labels::UploadResult;
use crate::obs::metrics::Metrics;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tracing::warn;

/// Size of each multipart part (S3's minimum for every part but the last).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Uploads running at once.
pub const MAX_UPLOADS: usize = 4;

/// Whole-upload attempts.
pub const UPLOAD_ATTEMPTS: u32 = 3;

/// Delay before the second whole-upload attempt.
pub const UPLOAD_BACKOFF: Duration = Duration::from_secs(1);

/// Retries of each request inside an attempt (by `object_store`).
pub const REQUEST_RETRIES: usize = 3;

/// Where recordings go: a bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    /// The bucket.
    pub bucket: String,
    /// Key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// An endpoint override (`http://127.0.0.1:9000`), path-style.
    pub endpoint: Option<String>,
}

impl S3Target {
    /// Reads `s3://bucket[/prefix]`.
    ///
    /// # Errors
    /// A message when the URL is not of that form.
    pub fn parse(url: &str, endpoint: Option<&str>) -> Result<S3Target, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
            return Err(format!("{bucket:?} is not an S3 bucket name"));
        }
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
        if let Some(e) = endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("the S3 endpoint {e:?} is not an http(s) URL"));
            }
        }
        Ok(S3Target {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: endpoint.map(str::to_owned),
        })
    }

    /// The object key of a recording file name.
    pub fn key(&self, file_name: &str) -> String {
        if self.prefix.is_empty() {
            file_name.to_owned()
        } else {
            format!("{}/{file_name}", self.prefix)
        }
    }

    /// `s3://bucket/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// The uploader: one S3 client for the process.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    target: S3Target,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("target", &self.target)
            .finish()
    }
}

impl Uploader {
    /// A client for `target` from the AWS environment.
    ///
    /// # Errors
    /// `object_store`'s configuration error, as text.
    pub fn new(target: S3Target, metrics: Arc<Metrics>) -> Result<Uploader, String> {
        // rustls without a bundled provider: the process's is ring (see wire::ws).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&target.bucket)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: REQUEST_RETRIES,
                retry_timeout: Duration::from_secs(120),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_connect_timeout(Duration::from_secs(5)),
            );
        if let Some(e) = &target.endpoint {
            // After with_client_options, which would reset it.
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| e.to_string())?;
        Ok(Uploader {
            store: Arc::new(store),
            target,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
            metrics,
        })
    }

    /// The target.
    pub fn target(&self) -> &S3Target {
        &self.target
    }

    /// Uploads `file` as `<prefix>/<file name>`, retrying as the module docs say, and
    /// removes it on success. Returns the object's `s3://` URL.
    ///
    /// # Errors
    /// The last attempt's error, as text (the file is kept).
    pub async fn upload(&self, file: &Path) -> Result<String, String> {
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("a recording file without a name")?;
        let key = self.target.key(name);
        let mut delay = UPLOAD_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=UPLOAD_ATTEMPTS {
            match self.put(file, &key).await {
                Ok(()) => {
                    self.metrics.recording_upload(UploadResult::Uploaded);
                    if let Err(e) = tokio::fs::remove_file(file).await {
                        warn!(file = %file.display(), error = %e, "uploaded recording not removed from the spool");
                    }
                    return Ok(self.target.url(&key));
                }
                Err(e) => {
                    last = e;
                    if attempt < UPLOAD_ATTEMPTS {
                        self.metrics.recording_upload(UploadResult::Retried);
                        warn!(key, attempt, error = %last, "recording upload failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
        self.metrics.recording_upload(UploadResult::Failed);
        warn!(key, file = %file.display(), error = %last, "recording upload failed: the file stays in the recording directory");
        Err(last)
    }

    async fn put(&self, file: &Path, key: &str) -> Result<(), String> {
        let path = ObjectPath::from(key);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e.to_string());
                }
            };
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
            if let Err(e) = w.wait_for_capacity(1).await {
                return Err(e.to_string());
            }
        }
        w.finish().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let t = S3Target::parse("s3://calls-2026/eu/rec/", Some("http://127.0.0.1:9000")).unwrap();
        assert_eq!(t.bucket, "calls-2026");
        assert_eq!(t.prefix, "eu/rec");
        assert_eq!(t.key("CA1_MZ1.wav"), "eu/rec/CA1_MZ1.wav");
        assert_eq!(
            t.url("eu/rec/CA1_MZ1.wav"),
            "s3://calls-2026/eu/rec/CA1_MZ1.wav"
        );
        let t = S3Target::parse("s3://bucket", None).unwrap();
        assert_eq!(
            (t.prefix.as_str(), t.key("a.wav")),
            ("", "a.wav".to_owned())
        );
        for bad in [
            "http://bucket/x",
            "s3://",
            "s3://Upper/x",
            "s3://ab",
            "s3://a_b/c",
        ] {
            assert!(S3Target::parse(bad, None).is_err(), "{bad}");
        }
        assert!(S3Target::parse("s3://bucket", Some("ftp://x")).is_err());
    }
}
