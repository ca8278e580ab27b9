//! Generates the gRPC code from `../proto` with a vendored `protoc`, so a fresh
//! machine builds without a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // Read at run time, not baked in with env!(): a build script compiled in
    // one worktree and reused from a copied target dir must read this
    // worktree's protos.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../proto");
    let files = [
        "tollgate_config.proto",
        "tollgate_admin.proto",
        "tollgate_stream.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| proto_dir.join(f)).collect();
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        // A snapshot chunk is a slice of one shared buffer: no copy per stream.
        .bytes([".tollgate.stream.v1.SnapshotChunk.data"])
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        .compile_protos(&paths, std::slice::from_ref(&proto_dir))?;
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Ok(())
}
