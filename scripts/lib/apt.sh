# shellcheck shell=bash
# apt_install PKG...: installs Debian packages quietly, through sudo when
# not root. For the CI scripts that fetch their own tools.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
