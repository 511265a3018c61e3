package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// parseMailDate reads an RFC 5322 §3.3 date-time the tolerant way Received
// headers need: the day of the week is optional, comments are ignored
// ("+0200 (CEST)"), seconds may be missing, two- and three-digit years and
// the obsolete zones of §4.3 are read as that section says (military
// letters and unknown names mean -0000, no zone at all too), and the
// asctime order "Sep 3 10:00:00 2024" is accepted. The result keeps the
// zone offset as written.
func parseMailDate(s string) (time.Time, error) {
	var (
		day, year, month = -1, -1, time.Month(0)
		clock            []int
		zone             *time.Location
	)
	fields := strings.Fields(strings.ReplaceAll(stripComments(s), ",", " "))
	if len(fields) == 0 {
		return time.Time{}, errors.New("no date")
	}
	for i, f := range fields {
		var err error
		switch {
		case i == 0 && weekday(f):
		case isDigits(f) && day < 0:
			day, err = number(f, 1, 2, "day")
		case isDigits(f) && year < 0:
			year, err = readYear(f)
		case month == 0 && monthOf(f) != 0:
			month = monthOf(f)
		case clock == nil && strings.Contains(f, ":"):
			clock, err = readClock(f)
		case clock != nil && zone == nil:
			zone, err = readZone(f)
		default:
			err = fmt.Errorf("unexpected %q", f)
		}
		if err != nil {
			return time.Time{}, err
		}
	}
	switch {
	case day < 0:
		return time.Time{}, errors.New("no day")
	case month == 0:
		return time.Time{}, errors.New("no month")
	case year < 0:
		return time.Time{}, errors.New("no year")
	case clock == nil:
		return time.Time{}, errors.New("no time of day")
	}
	if zone == nil {
		zone = time.UTC // RFC 5322 §4.3: no usable zone reads as -0000
	}
	if time.Date(year, month, day, 0, 0, 0, 0, time.UTC).Day() != day {
		return time.Time{}, fmt.Errorf("no day %d in %s", day, month)
	}
	// A leap second (60) is read as 59: time.Time cannot hold it, and
	// rolling over could leave year 9999.
	return time.Date(year, month, day, clock[0], clock[1], min(clock[2], 59), 0, zone), nil
}

// stripComments removes RFC 5322 comments, nested or not closed.
func stripComments(s string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && depth > 0:
			i++
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// number reads 1..maxDigits digits (maxDigits ≥ minDigits) as a number.
func number(s string, minDigits, maxDigits int, what string) (int, error) {
	if len(s) < minDigits || len(s) > maxDigits || !isDigits(s) {
		return 0, fmt.Errorf("bad %s %q", what, s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("bad %s %q", what, s)
	}
	return n, nil
}

// readYear reads a year; RFC 5322 §4.3: a two-digit year below 50 is 20xx,
// otherwise 19xx, and a three-digit year adds 1900.
func readYear(s string) (int, error) {
	y, err := number(s, 2, 4, "year")
	if err != nil {
		return 0, err
	}
	switch len(s) {
	case 2:
		if y < 50 {
			return 2000 + y, nil
		}
		return 1900 + y, nil
	case 3:
		return 1900 + y, nil
	}
	return y, nil
}

var weekdays = []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

func weekday(s string) bool {
	if len(s) < 3 {
		return false
	}
	for _, d := range weekdays {
		if strings.EqualFold(s[:3], d) {
			return true
		}
	}
	return false
}

func monthOf(s string) time.Month {
	if len(s) < 3 {
		return 0
	}
	for m := time.January; m <= time.December; m++ {
		if strings.EqualFold(s, m.String()[:3]) || strings.EqualFold(s, m.String()) {
			return m
		}
	}
	return 0
}

// readClock reads hh:mm or hh:mm:ss (a leap second 60 is allowed).
func readClock(s string) ([]int, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("bad time of day %q", s)
	}
	limits := []int{23, 59, 60}
	out := []int{0, 0, 0}
	for i, p := range parts {
		n, err := number(p, 1, 2, "time of day")
		if err != nil || n > limits[i] {
			return nil, fmt.Errorf("bad time of day %q", s)
		}
		out[i] = n
	}
	return out, nil
}

// obsoleteZones are the named zones of RFC 5322 §4.3 that carry an offset.
var obsoleteZones = map[string]int{
	"UT": 0, "GMT": 0, "Z": 0,
	"EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
	"MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
}

// readZone reads "+hhmm", "-hhmm" (or "+hh:mm"), an obsolete zone name, or
// any other short alphabetic name, which RFC 5322 §4.3 reads as -0000.
func readZone(s string) (*time.Location, error) {
	if s[0] == '+' || s[0] == '-' {
		digits := strings.Replace(s[1:], ":", "", 1)
		n, err := number(digits, 4, 4, "zone")
		if err != nil || n/100 > 23 || n%100 > 59 {
			return nil, fmt.Errorf("bad zone %q", s)
		}
		off := (n/100*60 + n%100) * 60
		if s[0] == '-' {
			off = -off
		}
		if off == 0 {
			return time.UTC, nil
		}
		return time.FixedZone("", off), nil
	}
	if h, ok := obsoleteZones[strings.ToUpper(s)]; ok {
		if h == 0 {
			return time.UTC, nil
		}
		return time.FixedZone(strings.ToUpper(s), h*3600), nil
	}
	if len(s) <= 5 && isLetters(s) {
		return time.UTC, nil
	}
	return nil, fmt.Errorf("bad zone %q", s)
}

func isLetters(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < 'a' || s[i] > 'z') && (s[i] < 'A' || s[i] > 'Z') {
			return false
		}
	}
	return s != ""
}
