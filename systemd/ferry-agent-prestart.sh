#!/bin/sh
# ferry-agent-prestart.sh STATE_DIR INSTALL_ROOT
#
# The boot counter of agent self-update, run by the unit as ExecStartPre= before
# every start of /opt/ferry/current/ferry-agent. It lives outside versions/ and
# self-update never replaces it, so a new agent that dies before any of its own
# code runs is still counted and rolled back (the part a bootloader plays for
# RAUC or Mender).
#
# Nothing pending (no STATE_DIR/pending.json): does nothing. Otherwise it adds 1
# to STATE_DIR/pending.attempts, and when that exceeds STATE_DIR/pending.max
# (default 3) it points INSTALL_ROOT/current back at the directory named in
# STATE_DIR/pending.previous and writes the reason to STATE_DIR/pending.rolledback;
# the previous agent then reports the rollback and remembers the version as bad.
# Every write is temp file + rename, so a power cut leaves the old or new value.
set -eu

state=${1:?usage: ferry-agent-prestart.sh STATE_DIR INSTALL_ROOT}
root=${2:?usage: ferry-agent-prestart.sh STATE_DIR INSTALL_ROOT}

[ -f "$state/pending.json" ] || exit 0
[ -f "$state/pending.rolledback" ] && exit 0 # already rolled back; the agent cleans up

attempts=$(cat "$state/pending.attempts" 2>/dev/null || true)
case $attempts in '' | *[!0-9]*) attempts=0 ;; esac
attempts=$((attempts + 1))
printf '%s\n' "$attempts" >"$state/pending.attempts.tmp"
mv -f "$state/pending.attempts.tmp" "$state/pending.attempts"

max=$(cat "$state/pending.max" 2>/dev/null || true)
case $max in '' | *[!0-9]*) max=3 ;; esac
[ "$attempts" -gt "$max" ] || exit 0

prev=$(cat "$state/pending.previous" 2>/dev/null || true)
if [ -z "$prev" ] || [ ! -f "$prev/ferry-agent" ]; then
  echo "ferry-agent-prestart: attempt $attempts > $max, but no previous version to roll back to" >&2
  exit 0
fi
ln -sfn "$prev" "$root/current.tmp"
mv -T "$root/current.tmp" "$root/current"
printf 'started %s times without a commit (max %s); rolled back to %s before the next start\n' \
  "$attempts" "$max" "$prev" >"$state/pending.rolledback.tmp"
mv -f "$state/pending.rolledback.tmp" "$state/pending.rolledback"
sync 2>/dev/null || true
echo "ferry-agent-prestart: rolled back to $prev after $attempts starts without a commit" >&2
