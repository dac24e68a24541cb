#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sequential little-endian reads from a file descriptor through a fixed buffer.
///
/// Every read is checked against the bytes left in the file first, so a hostile length field
/// produces ``GGUFError`` instead of an allocation.
struct ByteReader: ~Copyable {
    private let fd: Int32
    let fileSize: UInt64
    let path: String?
    private var buffer: [UInt8]
    private var bufferStart: UInt64 = 0  // file offset of buffer[0]
    private var bufferCount = 0
    private var position = 0  // index into buffer

    /// - Parameter declaredSize: the size of the whole file when `path` holds only its first
    ///   bytes (a header fetched from a remote file): bounds are checked against it, and a read
    ///   past the bytes present is `.truncated`.
    init(path: String, bufferSize: Int = 1 << 20, declaredSize: UInt64? = nil) throws(GGUFError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(.io(String(cString: strerror(errno))), offset: 0, path: path) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw GGUFError(.io("cannot stat file"), offset: 0, path: path)
        }
        self.fd = fd
        self.fileSize = declaredSize ?? UInt64(info.st_size)
        self.path = path
        self.buffer = [UInt8](repeating: 0, count: bufferSize)
    }

    deinit { close(fd) }

    /// Current file offset.
    var offset: UInt64 { bufferStart + UInt64(position) }
    /// Bytes between the current offset and the end of the file.
    var remaining: UInt64 { fileSize - offset }

    func error(_ kind: GGUFError.Kind, at offset: UInt64? = nil) -> GGUFError {
        GGUFError(kind, offset: offset ?? self.offset, path: path)
    }

    /// Makes at least `count` bytes available in the buffer (count ≤ buffer size).
    private mutating func fill(_ count: Int) throws(GGUFError) {
        if bufferCount - position >= count { return }
        guard UInt64(count) <= remaining else { throw error(.truncated) }
        // Move the unread tail to the front, then read more.
        let tail = bufferCount - position
        if tail > 0 && position > 0 {
            for i in 0..<tail { buffer[i] = buffer[position + i] }
        }
        bufferStart += UInt64(position)
        position = 0
        bufferCount = tail
        while bufferCount < count {
            let want = buffer.count - bufferCount
            let got = buffer.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + bufferCount, want, off_t(bufferStart) + off_t(bufferCount))
            }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw error(got == 0 ? .truncated : .io(String(cString: strerror(errno)))) }
            bufferCount += got
        }
    }

    mutating func u8() throws(GGUFError) -> UInt8 {
        try fill(1)
        defer { position += 1 }
        return buffer[position]
    }

    mutating func u16() throws(GGUFError) -> UInt16 { UInt16(truncatingIfNeeded: try uint(2)) }
    mutating func u32() throws(GGUFError) -> UInt32 { UInt32(truncatingIfNeeded: try uint(4)) }
    mutating func u64() throws(GGUFError) -> UInt64 { try uint(8) }

    private mutating func uint(_ width: Int) throws(GGUFError) -> UInt64 {
        try fill(width)
        var value: UInt64 = 0
        for i in 0..<width { value |= UInt64(buffer[position + i]) << (8 * UInt64(i)) }
        position += width
        return value
    }

    /// A length-prefixed UTF-8 string; `keep: false` skips it without decoding.
    mutating func string(keep: Bool = true) throws(GGUFError) -> String? {
        let start = offset
        let length = try u64()
        guard length <= remaining else { throw error(.stringTooLong(length), at: start) }
        if !keep {
            try skip(length)
            return nil
        }
        let n = Int(length)
        if n <= buffer.count {
            try fill(n)
            let s = buffer[position..<(position + n)].withUnsafeBufferPointer { String(validating: $0, as: UTF8.self) }
            guard let s else { throw error(.invalidUTF8, at: start) }
            position += n
            return s
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity(n)
        for _ in 0..<n { bytes.append(try u8()) }
        guard let s = String(validating: bytes, as: UTF8.self) else { throw error(.invalidUTF8, at: start) }
        return s
    }

    /// A length-prefixed string fed to `digests` in chunks, never decoded (a vocabulary's token
    /// texts, too many to keep).
    mutating func digestString(into digests: inout TokenTextDigests.Builder) throws(GGUFError) {
        let start = offset
        let length = try u64()
        guard length <= remaining else { throw error(.stringTooLong(length), at: start) }
        digests.begin(length: length)
        var left = Int(length)
        while left > 0 {
            let n = min(left, buffer.count)
            try fill(n)
            digests.bytes(buffer[position..<(position + n)])
            position += n
            left -= n
        }
        digests.end()
    }

    mutating func skip(_ count: UInt64) throws(GGUFError) {
        guard count <= remaining else { throw error(.truncated) }
        let inBuffer = UInt64(bufferCount - position)
        if count <= inBuffer {
            position += Int(count)
        } else {
            bufferStart = offset + count
            position = 0
            bufferCount = 0
        }
    }
}
