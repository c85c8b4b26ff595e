//! Compiles the vendored CRI v1 proto with protox (pure Rust, no `protoc` binary) and generates
//! prost messages plus tonic clients and servers. The proxy itself forwards raw bytes; the
//! generated types are used to decode the intercepted calls, by the CLI's CRI client, and by tests.
//!
//! It also writes `known_methods.rs`: every gRPC path the vendored proto defines, so the proxy can
//! tell a method a newer kubelet added (forwarded, logged once) from one it knows.

use std::fmt::Write as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;

    let mut known = String::from("/// Every gRPC path defined by the vendored CRI v1 proto.\n");
    known.push_str("pub const KNOWN_METHODS: &[&str] = &[\n");
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                writeln!(
                    known,
                    "    \"/{package}.{}/{}\",",
                    service.name(),
                    method.name()
                )?;
            }
        }
    }
    known.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("known_methods.rs"), known)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
