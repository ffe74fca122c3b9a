// MetricsText: the exposition parses line by line, escapes what the format requires and types families right.
import Testing
import TidemarkEngine

@Suite struct MetricsTextTests {
  /// One parsed sample line: `name{label="value",...} number`, label values unescaped.
  struct Line: Equatable {
    var name: String
    var labels: [String: String]
    var value: Double
  }

  /// A strict reader of the sample grammar: anything it cannot read fails the test through `nil`.
  static func parse(_ line: Substring) -> Line? {
    var rest = line[...]
    let name = rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }
    guard !name.isEmpty, !name.first!.isNumber else { return nil }
    rest = rest.dropFirst(name.count)
    var labels: [String: String] = [:]
    if rest.first == "{" {
      rest = rest.dropFirst()
      while rest.first != "}" {
        let label = rest.prefix { $0 != "=" }
        rest = rest.dropFirst(label.count)
        guard rest.hasPrefix("=\"") else { return nil }
        rest = rest.dropFirst(2)
        var value = ""
        while let c = rest.first, c != "\"" {
          rest = rest.dropFirst()
          if c == "\\" {
            switch rest.first {
            case "\\": value += "\\"
            case "\"": value += "\""
            case "n": value += "\n"
            default: return nil
            }
            rest = rest.dropFirst()
          } else {
            value.append(c)
          }
        }
        guard rest.first == "\"" else { return nil }
        rest = rest.dropFirst()
        labels[String(label)] = value
        if rest.first == "," { rest = rest.dropFirst() }
      }
      rest = rest.dropFirst()
    }
    guard rest.first == " ", let value = Double(rest.dropFirst()) else { return nil }
    return Line(name: String(name), labels: labels, value: value)
  }

  static let families: [MetricFamily] = [
    .gauge(
      "tidemark_replication_lag_seconds", "Now minus the capture time of the newest snapshot on the target.",
      [
        MetricSample(labels: [("target", "dr \"east\"\\1\nb")], value: 12.5),
        MetricSample(labels: [("target", "plain")], value: 0),
      ]),
    .counter(
      "tidemark_replicated_bytes_total", "Bytes copied to the target by replication.",
      [MetricSample(labels: [("target", "plain")], value: 1_234_567_890_123)]),
    .counter("tidemark_cycles_total", "Cycles run.", [MetricSample(7)]),
    .gauge("tidemark_last_success_timestamp_seconds", "When the last successful cycle ended.", []),
    .gauge("tidemark_cycle_success", "1 when the last cycle succeeded.", [MetricSample(1)]),
  ]

  @Test func everyLineParses() throws {
    let text = MetricsText.render(Self.families)
    #expect(text.hasSuffix("\n"))
    var samples: [Line] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
      if line.hasPrefix("#") {
        #expect(line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE "), "\(line)")
      } else {
        samples.append(try #require(Self.parse(line), "unparsable: \(line)"))
      }
    }
    #expect(
      samples == [
        Line(name: "tidemark_replication_lag_seconds", labels: ["target": "dr \"east\"\\1\nb"], value: 12.5),
        Line(name: "tidemark_replication_lag_seconds", labels: ["target": "plain"], value: 0),
        Line(name: "tidemark_replicated_bytes_total", labels: ["target": "plain"], value: 1_234_567_890_123),
        Line(name: "tidemark_cycles_total", labels: [:], value: 7),
        Line(name: "tidemark_cycle_success", labels: [:], value: 1),
      ])
    // Byte counts print as integers, not in exponent form.
    #expect(text.contains("tidemark_replicated_bytes_total{target=\"plain\"} 1234567890123\n"))
    // Consecutive renders are identical although the registry hashes.
    #expect(MetricsText.render(Self.families) == text)
  }

  @Test func labelValuesAreEscaped() {
    let text = MetricsText.render(Self.families)
    #expect(text.contains(#"tidemark_replication_lag_seconds{target="dr \"east\"\\1\nb"} 12.5"#))
  }

  @Test func typesAndHelp() {
    let lines = MetricsText.render(Self.families).split(separator: "\n").filter { $0.hasPrefix("# ") }
    #expect(
      lines == [
        "# HELP tidemark_replication_lag_seconds Now minus the capture time of the newest snapshot on the target.",
        "# TYPE tidemark_replication_lag_seconds gauge",
        "# HELP tidemark_replicated_bytes_total Bytes copied to the target by replication.",
        "# TYPE tidemark_replicated_bytes_total counter",
        "# HELP tidemark_cycles_total Cycles run.",
        "# TYPE tidemark_cycles_total counter",
        "# HELP tidemark_cycle_success 1 when the last cycle succeeded.",
        "# TYPE tidemark_cycle_success gauge",
      ])
  }

  @Test func helpTextStaysOnOneLine() {
    let text = MetricsText.render([.gauge("g", "a\\b\nc", [MetricSample(1)])])
    #expect(text == "# HELP g a\\\\b c\n# TYPE g gauge\ng 1.0\n")
  }

  @Test func inputsTheRegistryWouldTrapOnAreNormalised() throws {
    let text = MetricsText.render([
      .gauge("a-b", "first", [MetricSample(labels: [("t", "x"), ("t", "y"), ("9z", "v")], value: 1)]),
      .counter("a_b", "same name after repair", [MetricSample(2)]),
      .counter(
        "c_total", "",
        [
          MetricSample(3), MetricSample(labels: [("t", "x")], value: 4), MetricSample(labels: [("t", "x")], value: 5),
          MetricSample(labels: [("t", "n")], value: -1), MetricSample(labels: [("t", "nan")], value: .nan),
        ]),
    ])
    #expect(
      text == """
        # HELP a_b first
        # TYPE a_b gauge
        a_b{t="x",_z="v"} 1.0
        # TYPE c_total counter
        c_total{t="x"} 5

        """)
  }
}
