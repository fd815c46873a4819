//! Rust stubs of the CRI v1 subset the end-to-end tests drive
//! (tests/proto/cri_v1.proto): only a client, used by tests/cri.rs. protoc
//! is already a build requirement (the store's etcd backend).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto/cri_v1.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["tests/proto/cri_v1.proto"], &["tests/proto"])?;
    Ok(())
}
