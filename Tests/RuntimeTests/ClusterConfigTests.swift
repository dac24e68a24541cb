import Foundation
import Runtime
import Testing

/// `store` and `cluster` in routes.json: the names operators' tooling relies on, and refusals
/// that name the key.
@Suite struct ClusterConfigTests {
    func parse(_ json: String) throws -> CorralConfig {
        try CorralConfig.parse(Data(json.utf8), baseDirectory: "/base")
    }

    @Test func clusterSettingsParse() throws {
        let c = try parse(#"""
            {"store":{"url":"postgres://corral@db:5432/corral","passwordEnv":"PGPW"},
             "cluster":{"nodeName":"gpu-a","advertiseURL":"http://10.0.0.11:11434","secretEnv":"SECRET"}}
            """#)
        #expect(c.storeURL == "postgres://corral@db:5432/corral")
        #expect(c.storePasswordEnv == "PGPW")
        #expect(c.cluster == CorralConfig.Cluster(nodeName: "gpu-a", advertiseURL: "http://10.0.0.11:11434", secretEnv: "SECRET"))
        #expect(try parse("{}").cluster == nil)
        #expect(try parse("{}").storeURL == "")
    }

    @Test func badClusterSettingsNameTheKey() {
        let cases: [(String, String)] = [
            (#"{"cluster":{"advertiseURL":"http://a:1","secretEnv":"S"}}"#, "cluster.nodeName"),
            (#"{"cluster":{"nodeName":"a b","advertiseURL":"http://a:1","secretEnv":"S"}}"#, "cluster.nodeName"),
            (#"{"cluster":{"nodeName":"a","advertiseURL":"a:1","secretEnv":"S"}}"#, "cluster.advertiseURL"),
            (#"{"cluster":{"nodeName":"a","advertiseURL":"http://a:1"}}"#, "cluster.secretEnv"),
            (#"{"cluster":{"nodeName":"a","advertiseURL":"http://a:1","secretEnv":"S","extra":1}}"#, "cluster.extra"),
            (#"{"store":{"uri":"x"}}"#, "store.uri"),
        ]
        for (json, key) in cases {
            do {
                _ = try parse(json)
                Issue.record("accepted \(json)")
            } catch {
                #expect("\(error)".contains(key), "\(json): \(error)")
            }
        }
    }
}
