// swift-tools-version: 6.0
// A bare SwiftNIO HTTP/1.1 reverse proxy: the floor any Swift/NIO gateway pays per request.
// Not part of Corral; built only by scripts/bench_gateway.py --floor.
import PackageDescription

let package = Package(
    name: "nio-floor",
    dependencies: [.package(url: "https://github.com/apple/swift-nio", from: "2.101.2")],
    targets: [
        .executableTarget(
            name: "nio-floor",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOHTTP1", package: "swift-nio")])
    ])
