import Foundation
import Testing

@testable import Lab

/// Reading llama-perplexity's output and choosing which of a model's settings it is given.
@Suite struct PerplexityTests {
    @Test func readsChunksRunningEstimatesTheFinalFigureAndErrors() {
        var output = PerplexityOutput()
        for line in [
            "0.00.011.067 I perplexity: calculating perplexity over 4 chunks, n_ctx=128, batch_size=2048, n_seq=16",
            "[1]1275.2824,[2]2450.8524,[3]2411.8256,",
            "0.00.017.683 I Final estimate: PPL = 2714.1954 +/- 403.97901",
        ] { output.read(line) }
        #expect(output.chunks == 4 && output.chunksDone == 3)
        #expect(output.result?.perplexity == 2714.1954 && output.result?.error == 403.97901)

        var short = PerplexityOutput()
        short.read("0.00.011.044 E perplexity: you need at least 256 tokens to evaluate perplexity with a context of 128")
        #expect(short.result == nil && short.errors == ["perplexity: you need at least 256 tokens to evaluate perplexity with a context of 128"])
    }

    @Test func keepsOnlyTheSettingsTheToolShares() {
        let server = ["-c", "4096", "-np", "2", "-ngl", "99", "--jinja", "-fa", "on", "--port", "8080", "-ctk", "q8_0", "-t", "2", "-ngl"]
        #expect(PerplexityJob.sharedArguments(server) == ["-ngl", "99", "-fa", "on", "-ctk", "q8_0", "-t", "2"])
    }
}
