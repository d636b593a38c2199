//! The object store bodies and records go to.

use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::config::{CaptureConfig, StoreKind};

/// Opens the configured store; a local directory is created if missing.
/// The error says what is wrong, never a credential.
pub fn open(config: &CaptureConfig, data_dir: &Path) -> Result<Arc<dyn ObjectStore>, String> {
    let store = &config.store;
    match store.kind {
        StoreKind::Local => {
            let dir = data_dir.join(store.dir.as_deref().unwrap_or(Path::new("capture")));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("capture directory {}: {e}", dir.display()))?;
            // Captures hold decrypted cookies and credentials: this user's only.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("capture directory {}: {e}", dir.display()))?;
            }
            let local = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("capture directory {}: {e}", dir.display()))?;
            Ok(Arc::new(local))
        }
        StoreKind::S3 => {
            let mut builder = AmazonS3Builder::from_env()
                .with_virtual_hosted_style_request(!store.path_style)
                .with_allow_http(store.allow_http)
                // A failing store is given up on quickly: capture is best effort.
                .with_retry(RetryConfig {
                    max_retries: 2,
                    retry_timeout: config.store_timeout,
                    ..RetryConfig::default()
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_allow_http(store.allow_http)
                        // Capture's own timeout per operation is the one that speaks.
                        .with_timeout(config.store_timeout * 2)
                        .with_connect_timeout(config.store_timeout),
                );
            if let Some(bucket) = &store.bucket {
                builder = builder.with_bucket_name(bucket);
            }
            if let Some(endpoint) = &store.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &store.region {
                builder = builder.with_region(region);
            }
            if let (Some(id), Some(secret)) = (&store.access_key_id, &store.secret_access_key) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret.expose());
            }
            let s3 = builder.build().map_err(|e| format!("S3 store: {e}"))?;
            Ok(Arc::new(s3))
        }
    }
}
