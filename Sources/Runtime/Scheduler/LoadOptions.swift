/// What a request asks of the instance that serves it (Ollama's load-time `options`).
///
/// `minimumContext` is a minimum: any instance with at least that much context will do. The
/// other fields are exact: an instance started with different values is restarted with the
/// requested ones when it is idle; a busy one keeps serving (never interrupting others) and the
/// next load uses the requested values.
public struct LoadOptions: Sendable, Equatable {
    public var minimumContext: Int?
    /// `-ngl`
    public var gpuLayers: Int?
    /// `-t`
    public var threads: Int?
    /// `-b` and `-ub`
    public var batch: Int?
    /// `-lm mmap` or `-lm none` (`--load-mode`)
    public var useMmap: Bool?
    /// `--main-gpu`
    public var mainGPU: Int?

    public init(minimumContext: Int? = nil, gpuLayers: Int? = nil, threads: Int? = nil, batch: Int? = nil, useMmap: Bool? = nil, mainGPU: Int? = nil) {
        self.minimumContext = minimumContext
        self.gpuLayers = gpuLayers
        self.threads = threads
        self.batch = batch
        self.useMmap = useMmap
        self.mainGPU = mainGPU
    }

    /// The exact (non-context) part.
    var exact: LoadOptions { LoadOptions(gpuLayers: gpuLayers, threads: threads, batch: batch, useMmap: useMmap, mainGPU: mainGPU) }

    var hasExact: Bool { exact != LoadOptions() }

    /// Whether an instance started with `current` satisfies the exact fields asked for here.
    func isSatisfied(by current: LoadOptions) -> Bool {
        (gpuLayers == nil || gpuLayers == current.gpuLayers) && (threads == nil || threads == current.threads)
            && (batch == nil || batch == current.batch) && (useMmap == nil || useMmap == current.useMmap)
            && (mainGPU == nil || mainGPU == current.mainGPU)
    }

    /// llama-server flags for the exact fields.
    var arguments: [String] {
        var a: [String] = []
        if let gpuLayers { a += ["-ngl", String(gpuLayers)] }
        if let threads { a += ["-t", String(threads)] }
        if let batch { a += ["-b", String(batch), "-ub", String(batch)] }
        if let useMmap { a += ["-lm", useMmap ? "mmap" : "none"] }  // this llama.cpp spells it --load-mode
        if let mainGPU { a += ["--main-gpu", String(mainGPU)] }
        return a
    }
}
