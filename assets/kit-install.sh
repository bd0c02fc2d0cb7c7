#!/bin/sh
# ferry offline kit installer: run from the unpacked kit,
#
#   sh install.sh --root-sha256 FINGERPRINT [--root DIR] [--no-start]
#
# Checks the kit before it installs anything (docs/install.md): root.json must have the fingerprint the
# operator typed (`ferry trust show root.json` on a trusted machine prints it), kit.dsse.json must be signed
# by a threshold of that root's bundle keys (verified with this machine's openssl), and every file of the kit
# must have the size and SHA-256 the signed list gives it, with no file the list does not name. Then it
# installs ferry under /opt/ferry (CLI, mirror, server, agent, private Node.js runtime), the systemd units
# under /etc/systemd/system and the root as /etc/ferry/root.json. Services are enabled only with
# --enable mirror|server|agent (each needs its settings in /etc/ferry first: see docs/install.md).
# A refusal prints "REFUSED CODE: reason" and exits 1; a usage error exits 2.
set -eu
umask 022

@@FERRY_VERIFY_LIB@@

KIT_TYPE=application/vnd.ferry.kit+json
usage() {
  cat >&2 <<'USAGE_EOF'
usage: install.sh --root-sha256 F [--root DIR] [--enable mirror|server|agent]...
  --root-sha256 F  fingerprint of the trust root this kit was signed under (64 hex digits)
  --root DIR       install under DIR instead of / (an image or a test root)
  --enable UNIT    enable and start ferry-UNIT.service after installing (repeatable)
USAGE_EOF
  exit 2
}
root_sha='' prefix=/ enable=''
while [ $# -gt 0 ]; do
  case $1 in
  -h | --help) usage ;;
  --root-sha256 | --root | --enable) [ $# -ge 2 ] || { say "$1 needs a value" && usage; } ;;
  *) say "unknown option $1" && usage ;;
  esac
  case $1 in
  --root-sha256) root_sha=$2 ;;
  --root) prefix=$2 ;;
  --enable)
    case $2 in mirror | server | agent) enable="$enable $2" ;; *) say "--enable $2: mirror, server or agent" && usage ;; esac
    ;;
  esac
  shift 2
done
case $root_sha in *[!0-9a-fA-F]* | '') say '--root-sha256 must be 64 hex digits' && usage ;; esac
[ ${#root_sha} -eq 64 ] || { say '--root-sha256 must be 64 hex digits' && usage; }
root_sha=$(printf %s "$root_sha" | tr A-F a-f)
case $prefix in /*) ;; *) say '--root must be an absolute path' && usage ;; esac
prefix=${prefix%/}
for p in openssl gzip sha256sum; do
  command -v "$p" >/dev/null 2>&1 || refuse MISSING_PROGRAM "$p is needed and not installed"
done

kit=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-kit.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# 1. The root by its fingerprint, the list of files by a threshold of its bundle keys.
verify_root "$kit/root.json"
verify_signed "$kit/kit.dsse.json" $KIT_TYPE "$work/kit.json" KIT
tr -d '\r\n' <"$work/kit.json" >"$work/kit.flat"
[ "$(strings type "$work/kit.flat" | head -n1)" = ferry.kit/v1 ] || refuse KIT_INVALID 'not a ferry kit list'
version=$(strings version "$work/kit.flat" | head -n1)
case $version in '' | *[!0-9A-Za-z.+-]*) refuse KIT_INVALID 'the kit list names no version' ;; esac
say "kit ferry $version: the list is signed by $have of $need bundle key(s)"

# 2. Every file as listed (its sha256), and nothing else in the kit.
grep -o '{"path":"[^"]*","sha256":"[0-9a-f]\{64\}","size":[0-9]*,"mode":"[0-7]*"}' "$work/kit.flat" >"$work/files" ||
  refuse KIT_INVALID 'the kit list names no files'
# Sums and paths are read from the signed list alone; one sha256sum run checks them all.
sed 's/^{"path":"\([^"]*\)","sha256":"\([0-9a-f]*\)",.*/\2  \1/' "$work/files" >"$work/sums"
cut -c67- "$work/sums" >"$work/listed"
if grep -q -e '^/' -e '\(^\|/\)\.\.\?\(/\|$\)' -e '//' "$work/listed"; then
  refuse KIT_INVALID "the list names a path that is not plain and relative: $(grep -m1 -e '^/' -e '\.\.' "$work/listed")"
fi
while IFS= read -r path; do
  [ -f "$kit/$path" ] && [ ! -h "$kit/$path" ] || refuse KIT_INCOMPLETE "$path is missing from the kit"
done <"$work/listed"
(cd "$kit" && sha256sum --strict --quiet -c "$work/sums") >"$work/bad" 2>&1 ||
  refuse KIT_TAMPERED "files differ from the signed list: $(grep -v '^sha256sum: WARNING' "$work/bad" | head -n 5 | tr '\n' ' ')"
(cd "$kit" && find . \( -type f -o -type l \) ! -path ./kit.dsse.json ! -path ./root.json ! -path ./install.sh | sed 's|^\./||') |
  sort >"$work/present"
sort "$work/listed" | comm -13 - "$work/present" >"$work/extra"
[ ! -s "$work/extra" ] || refuse KIT_TAMPERED "files the signed list does not name: $(tr '\n' ' ' <"$work/extra")"
say "all $(wc -l <"$work/listed" | tr -d ' ') files match the signed list"

# 3. Install. The runtime is content-addressed like on nodes installed from a mirror.
opt=$prefix/opt/ferry etc=$prefix/etc/ferry units=$prefix/etc/systemd/system
agent_v=$(cat "$kit/agent/VERSION")
rt=$(sha256_of "$kit/runtime/ferry-runtime-linux-x64.gz")
mkdir -p "$opt/lib" "$opt/bin" "$opt/versions/$agent_v" "$opt/runtime/$rt/bin" "$etc" "$units" "$prefix/var/lib/ferry"
gzip -dc "$kit/runtime/ferry-runtime-linux-x64.gz" >"$opt/runtime/$rt/bin/node.tmp"
chmod 0755 "$opt/runtime/$rt/bin/node.tmp" && mv -f "$opt/runtime/$rt/bin/node.tmp" "$opt/runtime/$rt/bin/node"
ln -sfn "$rt" "$opt/runtime/current.tmp" && mv -fT "$opt/runtime/current.tmp" "$opt/runtime/current"
rm -rf "$opt/lib.new" && cp -R "$kit/lib" "$opt/lib.new" && rm -rf "$opt/lib" && mv "$opt/lib.new" "$opt/lib"
for d in assets systemd docs; do rm -rf "$opt/$d.new" && cp -R "$kit/$d" "$opt/$d.new" && rm -rf "$opt/$d" && mv "$opt/$d.new" "$opt/$d"; done
cp "$kit/bin/ferry" "$opt/bin/ferry.tmp" && chmod 0755 "$opt/bin/ferry.tmp" && mv -f "$opt/bin/ferry.tmp" "$opt/bin/ferry"
cp "$kit/agent/ferry-agent" "$opt/versions/$agent_v/ferry-agent.tmp"
chmod 0755 "$opt/versions/$agent_v/ferry-agent.tmp" && mv -f "$opt/versions/$agent_v/ferry-agent.tmp" "$opt/versions/$agent_v/ferry-agent"
[ -e "$opt/current" ] || { ln -sfn "versions/$agent_v" "$opt/current.tmp" && mv -fT "$opt/current.tmp" "$opt/current"; }
cp "$kit/systemd/ferry-agent-prestart.sh" "$opt/prestart.sh" && chmod 0755 "$opt/prestart.sh"
for u in mirror server agent; do cp "$kit/systemd/ferry-$u.service" "$units/ferry-$u.service"; done
cp "$kit/root.json" "$etc/root.json"
say "installed ferry $version under $opt (runtime $rt), units under $units"

for u in $enable; do
  systemctl daemon-reload
  systemctl enable --now "ferry-$u.service"
done
echo "ferry $version installed; run $prefix/opt/ferry/bin/ferry --help"
