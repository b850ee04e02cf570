#!/usr/bin/env bash
# Writes OUT.tar: a root filesystem standing in for the runtime base image of
# deploy/Dockerfile (gcr.io/distroless/cc-debian12:nonroot), which cannot be pulled here.
# Like distroless, it is Debian 12's packages unpacked, no shell and no package manager:
# glibc, libgcc, libstdc++ and libgomp, base-files, netbase, tzdata, and the `nonroot`
# user (65532). tests/deploy.rs imports it under the base image's name.
set -euo pipefail
out=${1:?usage: base-rootfs.sh OUT.tar}
packages=(base-files netbase tzdata libc6 libgcc-s1 libstdc++6 libgomp1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/rootfs"
# apt-get download drops to the _apt user, which must be able to write there.
chmod 755 "$work"
chmod 777 "$work/debs"
download() { (cd "$work/debs" && apt-get download -qq "${packages[@]}" 2>/dev/null); }
if ! download; then
  apt-get update -qq
  download
fi
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/rootfs"
done

root="$work/rootfs"
rm -rf "$root"/usr/share/{doc,man,info,lintian}
mkdir -p "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
cat >"$root/etc/passwd" <<'USERS'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
USERS
cat >"$root/etc/group" <<'GROUPS'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUPS
(cd "$work/debs" && ls) >"$root/etc/podscore-base-packages"

mkdir -p "$(dirname "$out")"
tar --numeric-owner --sort=name -C "$root" -cf "$out.partial" .
mv "$out.partial" "$out"
echo "base image root filesystem: $out ($(du -h "$out" | cut -f1); $(tr '\n' ' ' <"$root/etc/podscore-base-packages"))"
