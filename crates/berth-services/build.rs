//! Generates tonic server traits for containerd's API v1 services. The message types come
//! from the `containerd-client` crate; only the service plumbing is generated here.

use tonic_build::manual::{Builder, Method, Service};

/// (method, route name, input, output, client streaming, server streaming)
type M = (&'static str, &'static str, &'static str, &'static str, bool, bool);

fn service(name: &str, package: &str, module: &str, methods: &[M]) -> Service {
    let ty = |t: &str| if t == "()" { "crate::Empty".to_string() } else { format!("::containerd_client::services::v1::{module}{t}") };
    let mut s = Service::builder().name(name).package(package);
    for (m, route, input, output, cs, ss) in methods {
        let mut b = Method::builder()
            .name(*m)
            .route_name(*route)
            .input_type(ty(input))
            .output_type(ty(output))
            .codec_path("::tonic_prost::ProstCodec");
        if *cs {
            b = b.client_streaming();
        }
        if *ss {
            b = b.server_streaming();
        }
        s = s.method(b.build());
    }
    s.build()
}

fn main() {
    let services = [
        service("Version", "containerd.services.version.v1", "", &[("version", "Version", "()", "VersionResponse", false, false)]),
        service(
            "Namespaces",
            "containerd.services.namespaces.v1",
            "",
            &[
                ("get", "Get", "GetNamespaceRequest", "GetNamespaceResponse", false, false),
                ("list", "List", "ListNamespacesRequest", "ListNamespacesResponse", false, false),
                ("create", "Create", "CreateNamespaceRequest", "CreateNamespaceResponse", false, false),
                ("update", "Update", "UpdateNamespaceRequest", "UpdateNamespaceResponse", false, false),
                ("delete", "Delete", "DeleteNamespaceRequest", "()", false, false),
            ],
        ),
        service(
            "Introspection",
            "containerd.services.introspection.v1",
            "",
            &[
                ("plugins", "Plugins", "PluginsRequest", "PluginsResponse", false, false),
                ("server", "Server", "()", "ServerResponse", false, false),
                ("plugin_info", "PluginInfo", "PluginInfoRequest", "PluginInfoResponse", false, false),
            ],
        ),
        service(
            "Content",
            "containerd.services.content.v1",
            "",
            &[
                ("info", "Info", "InfoRequest", "InfoResponse", false, false),
                ("update", "Update", "UpdateRequest", "UpdateResponse", false, false),
                ("list", "List", "ListContentRequest", "ListContentResponse", false, true),
                ("delete", "Delete", "DeleteContentRequest", "()", false, false),
                ("read", "Read", "ReadContentRequest", "ReadContentResponse", false, true),
                ("status", "Status", "StatusRequest", "StatusResponse", false, false),
                ("list_statuses", "ListStatuses", "ListStatusesRequest", "ListStatusesResponse", false, false),
                ("write", "Write", "WriteContentRequest", "WriteContentResponse", true, true),
                ("abort", "Abort", "AbortRequest", "()", false, false),
            ],
        ),
        service(
            "Images",
            "containerd.services.images.v1",
            "",
            &[
                ("get", "Get", "GetImageRequest", "GetImageResponse", false, false),
                ("list", "List", "ListImagesRequest", "ListImagesResponse", false, false),
                ("create", "Create", "CreateImageRequest", "CreateImageResponse", false, false),
                ("update", "Update", "UpdateImageRequest", "UpdateImageResponse", false, false),
                ("delete", "Delete", "DeleteImageRequest", "()", false, false),
            ],
        ),
        service(
            "Leases",
            "containerd.services.leases.v1",
            "",
            &[
                ("create", "Create", "CreateRequest", "CreateResponse", false, false),
                ("delete", "Delete", "DeleteRequest", "()", false, false),
                ("list", "List", "ListRequest", "ListResponse", false, false),
                ("add_resource", "AddResource", "AddResourceRequest", "()", false, false),
                ("delete_resource", "DeleteResource", "DeleteResourceRequest", "()", false, false),
                ("list_resources", "ListResources", "ListResourcesRequest", "ListResourcesResponse", false, false),
            ],
        ),
        service(
            "Snapshots",
            "containerd.services.snapshots.v1",
            "snapshots::",
            &[
                ("prepare", "Prepare", "PrepareSnapshotRequest", "PrepareSnapshotResponse", false, false),
                ("view", "View", "ViewSnapshotRequest", "ViewSnapshotResponse", false, false),
                ("mounts", "Mounts", "MountsRequest", "MountsResponse", false, false),
                ("commit", "Commit", "CommitSnapshotRequest", "()", false, false),
                ("remove", "Remove", "RemoveSnapshotRequest", "()", false, false),
                ("stat", "Stat", "StatSnapshotRequest", "StatSnapshotResponse", false, false),
                ("update", "Update", "UpdateSnapshotRequest", "UpdateSnapshotResponse", false, false),
                ("list", "List", "ListSnapshotsRequest", "ListSnapshotsResponse", false, true),
                ("usage", "Usage", "UsageRequest", "UsageResponse", false, false),
                ("cleanup", "Cleanup", "CleanupRequest", "()", false, false),
            ],
        ),
        service(
            "Diff",
            "containerd.services.diff.v1",
            "",
            &[
                ("apply", "Apply", "ApplyRequest", "ApplyResponse", false, false),
                ("diff", "Diff", "DiffRequest", "DiffResponse", false, false),
            ],
        ),
    ];
    Builder::new().build_client(false).build_server(true).build_transport(true).compile(&services);
}
