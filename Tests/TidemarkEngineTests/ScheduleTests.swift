// Drill schedules: names, durations and cron expressions (local time), and when a drill is due.
import Foundation
import Testing
import TidemarkEngine

@Suite struct DrillScheduleTests {
  @Test func namesAndDurations() {
    #expect(DrillSchedule("weekly") == .every(seconds: 7 * 86400))
    #expect(DrillSchedule("daily") == .every(seconds: 86400))
    #expect(DrillSchedule("90m") == .every(seconds: 5400))
    #expect(DrillSchedule("sometimes") == nil && DrillSchedule("0s") == nil)
    let s = DrillSchedule("1h")!
    #expect(s.isDue(last: nil, now: 1000))
    #expect(!s.isDue(last: 1000, now: 1000 + 3599) && s.isDue(last: 1000, now: 1000 + 3600))
  }

  @Test func cronFieldsAndMatching() throws {
    #expect(Cron("61 * * * *") == nil && Cron("* * * *") == nil && Cron("*/0 * * * *") == nil)
    #expect(Cron("5-1 * * * *") == nil && Cron("a * * * *") == nil)
    // Sundays at 03:30 local time; 7 is Sunday too.
    let c = try #require(Cron("30 3 * * 7"))
    var t = tm()
    t.tm_year = 2026 - 1900
    t.tm_mon = 10  // November
    t.tm_mday = 22  // a Sunday
    t.tm_hour = 3
    t.tm_min = 30
    t.tm_isdst = -1
    let sunday = Double(mktime(&t))
    #expect(c.matches(sunday) && c.matches(sunday + 59))
    #expect(!c.matches(sunday + 60) && !c.matches(sunday + 86400) && !c.matches(sunday - 7 * 86400 + 86400))
    #expect(c.matches(sunday - 7 * 86400))
    let s = DrillSchedule.cron(c)
    #expect(s.isDue(last: sunday - 86400, now: sunday))
    #expect(!s.isDue(last: sunday, now: sunday + 3 * 86400))
    #expect(s.isDue(last: sunday, now: sunday + 7 * 86400))
    // Steps, ranges and lists; both day fields restricted: either matches.
    let every15 = try #require(Cron("*/15 8-18 * * 1-5"))
    #expect(every15.matches(sunday + 86400 + 5 * 3600 + 15 * 60))  // Monday 08:45
    #expect(!every15.matches(sunday + 86400 + 5 * 3600 + 10 * 60))
    #expect(!every15.matches(sunday + 5 * 3600 + 15 * 60))  // Sunday
    let either = try #require(Cron("0 0 1 * 0"))
    t.tm_mday = 1
    t.tm_hour = 0
    t.tm_min = 0
    #expect(either.matches(Double(mktime(&t))))  // the 1st (a Sunday-independent match)
  }
}
