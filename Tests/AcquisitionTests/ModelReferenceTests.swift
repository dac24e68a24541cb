import Testing

@testable import Acquisition

/// The names users type, parsed as Ollama and the hub do, and everything else refused before it
/// can become a URL or a path.
@Suite struct ModelReferenceTests {
    @Test func ollamaNamesGetTheirDefaults() throws {
        #expect(try ModelReference("llama3") == .ollama(host: "registry.ollama.ai", namespace: "library", model: "llama3", tag: "latest"))
        #expect(try ModelReference("someone/model:q4") == .ollama(host: "registry.ollama.ai", namespace: "someone", model: "model", tag: "q4"))
        #expect(try ModelReference("127.0.0.1:5000/library/tiny:v1") == .ollama(host: "127.0.0.1:5000", namespace: "library", model: "tiny", tag: "v1"))
        #expect(try ModelReference("localhost/tiny") == .ollama(host: "localhost", namespace: "library", model: "tiny", tag: "latest"))
        #expect(try ModelReference("registry.example.com/tiny").description == "registry.example.com/library/tiny:latest")
        #expect(try ModelReference("Llama3:8B").description == "llama3:8B")
    }

    @Test func huggingFaceNamesKeepTheirQuant() throws {
        #expect(try ModelReference("hf.co/Org/Repo-GGUF:Q8_0") == .huggingFace(repository: "Org/Repo-GGUF", quant: "Q8_0"))
        #expect(try ModelReference("huggingface.co/org/repo") == .huggingFace(repository: "org/repo", quant: nil))
        #expect(try ModelReference("hf.co/org/repo").description == "hf.co/org/repo")
    }

    @Test func pathsAndOddCharactersAreRefused() {
        for bad in ["", "../../etc/passwd", "a/b/c/d", "hf.co/only", "hf.co/a/../b", "model:tag/x", "x y", "lib/mo del", "hf.co/org/repo:Q4 K", "/abs",
                    "host/../model", String(repeating: "a", count: 301)] {
            #expect(throws: AcquisitionError.self, "\(bad)") { try ModelReference(bad) }
        }
    }

    @Test func rangeStartsAreReadFromContentRange() {
        #expect(BlobDownloader.rangeStart("bytes 100-199/1000") == 100)
        #expect(BlobDownloader.rangeStart("bytes */1000") == nil)
    }
}
