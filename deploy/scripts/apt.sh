# Sourced by deps.sh and deps-cross.sh: installs Debian packages that are
# missing, idempotently (nothing is fetched when all are installed).
#
#   apt_ensure WHO package[:--no-install-recommends]...

apt_ensure() {
  local who=$1 p missing=() plain=() norec=()
  shift
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "${p%%:*}" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "$who: all system packages present"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing ${missing[*]%%:*}; run as root (apt-get install)" >&2
    return 1
  fi
  echo "$who: installing ${missing[*]%%:*}"
  for p in "${missing[@]}"; do
    case $p in
      *:--no-install-recommends) norec+=("${p%%:*}") ;;
      *) plain+=("$p") ;;
    esac
  done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  [ ${#plain[@]} -eq 0 ] || apt-get install -y -qq "${plain[@]}"
  [ ${#norec[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${norec[@]}"
}
