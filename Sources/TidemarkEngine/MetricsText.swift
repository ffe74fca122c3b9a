// The Prometheus text exposition (format 0.0.4) of the engine's state: callers describe metric families as values
// and `MetricsText.render` turns them into the text a scrape receives. Escaping and the line grammar are
// swift-prometheus's: every render fills a fresh `PrometheusCollectorRegistry` and emits it, so label values
// (`\`, `"`, line feed) and HELP text (`\`) are escaped by the library rather than by hand.
//
// Concurrency: the model is plain Sendable values and `render` is a pure function of its argument; the registry
// lives only for one call, so concurrent scrapes never share metric state.
//
// Must never trap: swift-prometheus calls fatalError on a name registered twice with a different kind or HELP, on
// a family mixing labeled and unlabeled samples, on a repeated label name and on a negative counter increment. A
// scrape must not bring the daemon down, so those inputs are normalised (see `render`) before they reach it.
internal import Prometheus

/// One metric family: a name, its HELP text, its TYPE and its samples.
public struct MetricFamily: Sendable {
  public enum Kind: Sendable {
    case gauge
    /// A monotonic total; by Prometheus convention the name ends in `_total` (`tidemark_cycles_total`).
    case counter
  }

  public var name: String
  public var help: String
  public var kind: Kind
  public var samples: [MetricSample]

  public init(name: String, help: String, kind: Kind, samples: [MetricSample]) {
    self.name = name
    self.help = help
    self.kind = kind
    self.samples = samples
  }

  public static func gauge(_ name: String, _ help: String, _ samples: [MetricSample]) -> MetricFamily {
    MetricFamily(name: name, help: help, kind: .gauge, samples: samples)
  }

  public static func counter(_ name: String, _ help: String, _ samples: [MetricSample]) -> MetricFamily {
    MetricFamily(name: name, help: help, kind: .counter, samples: samples)
  }
}

/// One time series of a family: its labels (name, value) in order, and its value.
public struct MetricSample: Sendable {
  public var labels: [(String, String)]
  public var value: Double

  public init(labels: [(String, String)] = [], value: Double) {
    self.labels = labels
    self.value = value
  }

  public init(_ value: Double) {
    self.init(labels: [], value: value)
  }
}

public enum MetricsText {
  /// The exposition of `families`, in the order given; within a family, samples are sorted by their rendered
  /// line so consecutive scrapes are byte-identical (the registry keeps them in a hash table).
  ///
  /// A family without samples emits nothing, not even HELP/TYPE: the registry only knows a family through a
  /// sample, and Prometheus treats an absent family and an empty one alike.
  ///
  /// Inputs the registry would trap on are normalised:
  /// - names and label names are made valid by replacing each invalid character with `_`;
  /// - a family whose (valid) name was already rendered is skipped;
  /// - a repeated label name keeps its first value;
  /// - a family with labeled samples drops its unlabeled ones; an unlabeled family keeps its last sample;
  /// - a repeated label set keeps its last value;
  /// - a counter sample that is negative or NaN is skipped (a counter cannot go down).
  ///
  /// HELP: the format allows `\n` escapes, but swift-prometheus 2.x strips control characters from help text
  /// (words would be glued together), so line breaks and tabs become spaces here first.
  public static func render(_ families: [MetricFamily]) -> String {
    let registry = PrometheusCollectorRegistry()
    var order: [String] = []
    var seen: Set<String> = []
    for family in families {
      let name = validName(family.name, allowColon: true)
      guard !name.isEmpty, seen.insert(name).inserted else { continue }
      let help = String(
        family.help.unicodeScalars.map { scalar in
          scalar == "\n" || scalar == "\r" || scalar == "\t" ? " " : Character(scalar)
        })
      var samples = family.samples.map { MetricSample(labels: validLabels($0.labels), value: $0.value) }
      if family.kind == .counter { samples.removeAll { !($0.value >= 0) } }
      if samples.contains(where: { !$0.labels.isEmpty }) {
        samples.removeAll { $0.labels.isEmpty }
      } else if let last = samples.last {
        samples = [last]
      }
      guard !samples.isEmpty else { continue }
      order.append(name)
      // The whole name goes in `metricName`: the empty unit adds no suffix.
      let descriptor = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
      for sample in samples {
        switch family.kind {
        case .gauge:
          registry.makeGauge(descriptor: descriptor, labels: sample.labels).set(to: sample.value)
        case .counter:
          let counter = registry.makeCounter(descriptor: descriptor, labels: sample.labels)
          // A repeated label set returns the same counter: start over so the last value wins, as for gauges.
          counter.reset()
          // The integer path prints `42`, not `42.0`: byte counts stay readable.
          if sample.value < 0x1p63, sample.value.rounded(.towardZero) == sample.value {
            counter.increment(by: Int64(sample.value))
          } else {
            counter.increment(by: sample.value)
          }
        }
      }
    }
    return reordered(registry.emitToString(), order: order)
  }

  /// The registry emits families in hash-table order; put them back in the caller's order. Every emitted line
  /// names its family first (`# HELP name`, `# TYPE name`, `name{` or `name `), and no line can contain a line
  /// feed (label values escape it, help text has none), so splitting on `\n` is exact.
  private static func reordered(_ text: String, order: [String]) -> String {
    var comments: [String: [Substring]] = [:]
    var samples: [String: [Substring]] = [:]
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
      if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
        let name = line.dropFirst(7).prefix { $0 != " " }
        comments[String(name), default: []].append(line)
      } else {
        let name = line.prefix { $0 != "{" && $0 != " " }
        samples[String(name), default: []].append(line)
      }
    }
    var out = ""
    for name in order {
      for line in comments[name] ?? [] { out += line + "\n" }
      for line in (samples[name] ?? []).sorted() { out += line + "\n" }
    }
    return out
  }

  /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names, without `:` for label names; the same repair the registry
  /// applies, done here so that names which repair to the same string are caught as duplicates.
  private static func validName(_ name: String, allowColon: Bool) -> String {
    var out = ""
    for (i, scalar) in name.unicodeScalars.enumerated() {
      switch scalar {
      case "a"..."z", "A"..."Z", "_": out.unicodeScalars.append(scalar)
      case ":" where allowColon: out.unicodeScalars.append(scalar)
      case "0"..."9" where i > 0: out.unicodeScalars.append(scalar)
      default: out += "_"
      }
    }
    return out
  }

  private static func validLabels(_ labels: [(String, String)]) -> [(String, String)] {
    var out: [(String, String)] = []
    var names: Set<String> = []
    for (name, value) in labels {
      let valid = name.isEmpty ? "_" : validName(name, allowColon: false)
      if names.insert(valid).inserted { out.append((valid, value)) }
    }
    return out
  }
}
