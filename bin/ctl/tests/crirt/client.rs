//! A small blocking CRI v1 client over containerd's unix socket: the
//! generated stubs of tests/proto/cri_v1.proto on a current-thread tokio
//! runtime, every call under a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages and client (build.rs).
#[allow(dead_code, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("runtime.v1");
}

use pb::runtime_service_client::RuntimeServiceClient;

/// How long one call may take (RunPodSandbox includes the CNI ADD).
const CALL: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket at `sock` and waits (until `deadline`)
    /// for the CRI service to answer Version.
    pub fn connect(sock: &Path, deadline: Instant) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let path = sock.to_path_buf();
        // The URI is a placeholder: the connector dials the unix socket.
        let channel = rt.block_on(async {
            Endpoint::from_static("http://localhost")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
        });
        let cri = Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        };
        loop {
            let mut c = cri.client.clone();
            let r = cri.call(async move {
                c.version(pb::VersionRequest {
                    version: "v1".into(),
                })
                .await
            });
            match r {
                Ok(v) if v.runtime_api_version == "v1" => return cri,
                other => assert!(
                    Instant::now() < deadline,
                    "no CRI v1 service on {}: {other:?}",
                    sock.display()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL, f).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Err(format!("no answer within {CALL:?}")),
            }
        })
    }

    /// RunPodSandbox of pod `namespace/name` (uid `uid`), attempt `attempt`;
    /// returns the sandbox id.
    pub fn run_pod_sandbox(&self, name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
        let meta = pb::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt,
        };
        let req = pb::RunPodSandboxRequest {
            config: Some(pb::PodSandboxConfig {
                metadata: Some(meta),
                hostname: name.into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let mut c = self.client.clone();
        let r = self.call(async move { c.run_pod_sandbox(req).await });
        r.unwrap_or_else(|e| panic!("RunPodSandbox {namespace}/{name} attempt {attempt}: {e}"))
            .pod_sandbox_id
    }

    pub fn status(&self, id: &str) -> pb::PodSandboxStatus {
        let req = pb::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let mut c = self.client.clone();
        let r = self.call(async move { c.pod_sandbox_status(req).await });
        r.unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
            .status
            .unwrap_or_else(|| panic!("PodSandboxStatus {id}: no status"))
    }

    pub fn stop(&self, id: &str) {
        let req = pb::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let mut c = self.client.clone();
        let r = self.call(async move { c.stop_pod_sandbox(req).await });
        r.unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
    }

    pub fn remove(&self, id: &str) {
        let req = pb::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let mut c = self.client.clone();
        let r = self.call(async move { c.remove_pod_sandbox(req).await });
        r.unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    }

    /// Stops and removes every sandbox the runtime still knows (the CNI
    /// DEL, the unmounts), as a kubelet would; errors are only reported:
    /// this runs while a failed test unwinds.
    pub fn remove_all(&self) {
        let items = match self.try_list() {
            Ok(items) => items,
            Err(e) => return eprintln!("ListPodSandbox: {e}"),
        };
        for (id, _) in items {
            let mut c = self.client.clone();
            let req = pb::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = self.call(async move { c.stop_pod_sandbox(req).await }) {
                eprintln!("StopPodSandbox {id}: {e}");
            }
            let mut c = self.client.clone();
            let req = pb::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = self.call(async move { c.remove_pod_sandbox(req).await }) {
                eprintln!("RemovePodSandbox {id}: {e}");
            }
        }
    }

    /// The sandboxes the runtime knows: (id, state).
    pub fn list(&self) -> Vec<(String, pb::PodSandboxState)> {
        self.try_list()
            .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
    }

    fn try_list(&self) -> Result<Vec<(String, pb::PodSandboxState)>, String> {
        let mut c = self.client.clone();
        let r = self.call(async move { c.list_pod_sandbox(pb::ListPodSandboxRequest {}).await });
        Ok(r?
            .items
            .into_iter()
            .map(|s| {
                let state = s.state();
                (s.id, state)
            })
            .collect())
    }
}
