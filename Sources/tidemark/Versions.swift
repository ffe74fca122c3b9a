import TidemarkFUSE
import TidemarkSSH

enum FUSEVersion { static var string: String { FUSELibrary.version } }
enum SSHVersion { static var string: String { SSHLibrary.version } }
