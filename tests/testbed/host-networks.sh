#!/bin/sh
# Daemon networks as a user meets them: `vireo host` makes the `default` network at its first
# start; `vireo network create` makes VLAN 10 (blue) and VLAN 20 (red, with a subnet the host
# serves DHCP on) on the shared VLAN-filtering bridge. Guests a and b (VLAN 10, 10.10.0.1 and
# .2) ping each other. Guest c has a NIC on red (a DHCP lease from red's dnsmasq, plus the
# static 10.10.0.3/24) and one on default (a DHCP lease there): it pings both host addresses,
# but never reaches a or b, whose subnet it shares but not their VLAN. A network in use cannot
# be deleted; stopping the VMs removes their TAPs; deleting the networks removes the bridges,
# the VLAN interface, the nft tables and dnsmasq.
. /root/tests/lib.sh
start_daemon hn
vireo network show default > /tmp/hn-default.txt 2>&1 || { cat /tmp/hn-default.txt; cat /tmp/hn-daemon.log; fail "no default network after the daemon's first start"; }
grep -q 'state: *available' /tmp/hn-default.txt || { cat /tmp/hn-default.txt; fail "the default network is not available"; }
DGW=$(awk '/^host address:/ {print $3}' /tmp/hn-default.txt)
[ -n "$DGW" ] || { cat /tmp/hn-default.txt; fail "the default network shows no host address"; }
ip -4 addr show dev vb-default | grep -q "inet $DGW/" || fail "vb-default lacks $DGW"
pidof dnsmasq > /dev/null || fail "no dnsmasq runs for the default network"
pass "the default network exists from the daemon's first start: vb-default, host $DGW, dnsmasq"

vireo network create blue --type vlan --vlan 10 > /tmp/hn-net.log 2>&1 || { cat /tmp/hn-net.log; fail "network create blue"; }
vireo network create red --type vlan --vlan 20 --subnet 10.20.0.0/24 >> /tmp/hn-net.log 2>&1 || { cat /tmp/hn-net.log; fail "network create red"; }
vireo network create bad --type vlan --vlan 5000 > /tmp/hn-bad.log 2>&1 && fail "VLAN 5000 was accepted"
grep -q '1 to 4094' /tmp/hn-bad.log || { cat /tmp/hn-bad.log; fail "the VLAN refusal does not say why"; }
vireo network create pink --type bridge --subnet 10.20.0.128/25 > /tmp/hn-bad.log 2>&1 && fail "an overlapping subnet was accepted"
grep -q 'overlaps' /tmp/hn-bad.log || { cat /tmp/hn-bad.log; fail "the overlap refusal does not say why"; }
ip link show vb-pink > /dev/null 2>&1 && fail "the refused network left its bridge"
[ "$(cat /sys/class/net/vireo-vlan/bridge/vlan_filtering)" = 1 ] || fail "vireo-vlan does not filter VLANs"
vireo network list
pass "vlan networks blue (10) and red (20, 10.20.0.0/24) on vireo-vlan; VLAN 5000 and an overlapping subnet refused"

SA='ip link set eth0 up; ip addr add 10.10.0.1/24 dev eth0
i=0; while [ $i -lt 60 ]; do ping -c 1 -W 1 10.10.0.2 > /dev/null 2>&1 && { echo A-PING-B-OK; break; }; i=$((i+1)); done
[ $i -lt 60 ] || echo A-PING-B-FAILED'
SB='ip link set eth0 up; ip addr add 10.10.0.2/24 dev eth0; echo B-UP'
SC='ifname() { for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && basename $d; done; }
R=$(ifname 52:54:00:00:20:03); D=$(ifname 52:54:00:00:00:03)
printf "#!/bin/sh\ncase \$1 in bound|renew) ip addr add \$ip/\$mask dev \$interface; echo LEASE \$interface \$ip > /dev/console;; esac\n" > /tmp/dh; chmod +x /tmp/dh
ip link set $R up; ip link set $D up
udhcpc -i $R -n -q -t 10 -T 2 -s /tmp/dh > /dev/null 2>&1 || echo C-DHCP-RED-FAILED
udhcpc -i $D -n -q -t 10 -T 2 -s /tmp/dh > /dev/null 2>&1 || echo C-DHCP-DEFAULT-FAILED
ip addr add 10.10.0.3/24 dev $R
ping -c 3 -W 2 10.20.0.1 > /dev/null 2>&1 && echo C-PING-RED-HOST-OK
ping -c 3 -W 2 '"$DGW"' > /dev/null 2>&1 && echo C-PING-DEFAULT-HOST-OK
n=0; for t in 1 2 3 4 5; do for h in 10.10.0.1 10.10.0.2; do ping -c 1 -W 1 $h > /dev/null 2>&1 && n=$((n+1)); done; done
echo C-VLAN10-REPLIES=$n'
create() { vireo vm create "$@" > /tmp/hn-create.log 2>&1 || { cat /tmp/hn-create.log; fail "vm create $1"; }; }
create a --kernel $KERNEL_BZ --initrd $INITRD --memory 256M --net network=blue \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$SA")"
create b --kernel $KERNEL_BZ --initrd $INITRD --memory 256M --net network=blue \
	--cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$SB")"
create c --kernel $KERNEL_BZ --initrd $INITRD --memory 256M --net network=red,mac=52:54:00:00:20:03 \
	--net network=default,mac=52:54:00:00:00:03 --cmdline "$BASE_CMDLINE vireo.hold=1 vireo.script=b64:$(b64 "$SC")"
vireo vm show c | grep -q 'network=red tap=vt' || { vireo vm show c; fail "vm show c does not name its network and TAP"; }
vireo vm start b > /tmp/hn-start.log 2>&1 || { cat /tmp/hn-start.log; fail "vm start b"; }
vireo vm start a > /tmp/hn-start.log 2>&1 || { cat /tmp/hn-start.log; fail "vm start a"; }
TAPA=$(vireo vm show a | sed -n 's/.*tap=\(vt[0-9a-f]*\).*/\1/p')
[ "$(basename "$(readlink /sys/class/net/$TAPA/master)")" = vireo-vlan ] || fail "a's TAP $TAPA is not in vireo-vlan"
bridge vlan show dev "$TAPA" | grep -q '10 PVID' || { bridge vlan show; fail "a's TAP is not on VLAN 10"; }
logs() { vireo vm logs $1 2>/dev/null | tr -d '\r'; }
n=0
until logs a | grep -q '^A-PING-B'; do
	n=$((n + 1)); [ $n -lt 150 ] || { logs a | tail -5; logs b | tail -5; fail "guest a never finished pinging b"; }
	sleep 1
done
logs a | grep -q '^A-PING-B-OK' || { logs a | tail; fail "a (VLAN 10) could not ping b (VLAN 10)"; }
pass "guests a and b on VLAN 10 ping each other"

vireo vm start c > /tmp/hn-start.log 2>&1 || { cat /tmp/hn-start.log; fail "vm start c"; }
n=0
until logs c | grep -q '^C-VLAN10-REPLIES='; do
	n=$((n + 1)); [ $n -lt 180 ] || { logs c | tail -10; fail "guest c never finished"; }
	sleep 1
done
logs c | grep -E '^(LEASE|C-)' | sed 's/^/  c: /'
logs c | grep -q '^LEASE .* 10\.20\.0\.' || fail "c got no DHCP lease on red (VLAN 20)"
logs c | grep -q "^LEASE .* ${DGW%.*}\." || fail "c got no DHCP lease on the default network"
logs c | grep -q '^C-PING-RED-HOST-OK' || fail "c could not ping red's host address 10.20.0.1"
logs c | grep -q '^C-PING-DEFAULT-HOST-OK' || fail "c could not ping the default network's host address $DGW"
logs c | grep -q '^C-VLAN10-REPLIES=0$' || fail "c on VLAN 20 reached a or b on VLAN 10"
pass "c (VLAN 20 + default) got DHCP leases on both, pings both host addresses, and never reaches VLAN 10"

vireo network delete default > /tmp/hn-del.log 2>&1 && fail "the default network was deleted while c uses it"
grep -q 'VM c' /tmp/hn-del.log || { cat /tmp/hn-del.log; fail "the refusal does not name the VM"; }
for v in a b c; do vireo vm stop $v --force > /dev/null 2>&1 || fail "vm stop $v"; done
ip -br link | grep -q '^vt' && { ip -br link; fail "TAPs outlived their VMs"; }
for v in a b c; do vireo vm delete $v > /dev/null 2>&1 || fail "vm delete $v"; done
for n in blue red default; do vireo network delete $n > /tmp/hn-del.log 2>&1 || { cat /tmp/hn-del.log; fail "network delete $n"; }; done
ip -br link | grep -E '^(vb-|vireo-vlan|vt)' && fail "interfaces outlived their networks"
nft list tables | grep -q vireo && { nft list tables; fail "nft tables outlived their networks"; }
sleep 0.5
pidof dnsmasq > /dev/null && fail "dnsmasq outlived its networks"
pass "a network in use is not deleted; stopped VMs leave no TAPs; deleted networks leave no bridge, VLAN interface, nft table or dnsmasq"
