/**
 * The maintenance window: the days, start and end (HH:MM, local wall time) in
 * an IANA time zone, judged with Intl. A window whose end is not after its start
 * spans midnight and belongs to the day it starts on (sat 23:00–02:00 covers
 * Sunday 01:00). Wall time decides, so on DST days a window covers the local
 * hours that exist: 02:30–03:30 on a spring-forward night opens at 03:00, and on
 * a fall-back night the repeated hour is inside it twice. start == end is the
 * whole day.
 */
import type { Window } from './plan.js';

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const formats = new Map<string, Intl.DateTimeFormat>();

function formatFor(tz: string): Intl.DateTimeFormat {
  let f = formats.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      weekday: 'short',
      hour: '2-digit',
      minute: '2-digit',
      hourCycle: 'h23',
    });
    formats.set(tz, f);
  }
  return f;
}

/** Local day (sun..sat) and minute of the day at `now` in `tz`. */
export function localTime(now: number, tz: string): { day: string; minute: number } {
  let day = '';
  let hour = 0;
  let minute = 0;
  for (const p of formatFor(tz).formatToParts(new Date(now))) {
    if (p.type === 'weekday') day = p.value.toLowerCase().slice(0, 3);
    else if (p.type === 'hour') hour = Number(p.value) % 24;
    else if (p.type === 'minute') minute = Number(p.value);
  }
  return { day, minute: hour * 60 + minute };
}

const minutes = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

export function inWindow(w: Window | null, now: number): boolean {
  if (!w) return true;
  const { day, minute } = localTime(now, w.tz);
  const start = minutes(w.start);
  const end = minutes(w.end);
  const on = (d: string) => w.days.includes(d);
  if (start === end) return on(day);
  if (start < end) return on(day) && minute >= start && minute < end;
  const yesterday = DAYS[(DAYS.indexOf(day) + 6) % 7]!;
  return (on(day) && minute >= start) || (on(yesterday) && minute < end);
}
