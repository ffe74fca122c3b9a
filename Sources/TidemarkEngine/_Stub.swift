import TidemarkCore

enum IndexConsolidation {
  static func run(_ repo: Repository, maxFiles: Int) async throws -> Int { 0 }
}
