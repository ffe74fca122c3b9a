import TidemarkCrypto
import TidemarkFUSE
import TidemarkSSH
import TidemarkZstd

enum FUSEVersion { static var string: String { FUSELibrary.version } }
enum SSHVersion { static var string: String { SSHLibrary.version } }
enum OpenSSLVersion { static var string: String { CryptoLibrary.version } }
enum ZstdVersion { static var string: String { Zstd.version } }
