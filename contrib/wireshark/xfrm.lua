-- Names XFRM (IPsec) netlink messages in Wireshark and tshark.
--
-- Wireshark dissects netlink captures (LINKTYPE_NETLINK: nlmon, `xfrmwatch record`) but has
-- no dissector for the XFRM family: it shows "Protocol-specific (0x0010)".  This
-- postdissector adds the message names (field xfrm.msg, the Info column) and the markers
-- `xfrmwatch record` writes (see docs/recordings.md):
--
--   tshark -r session.pcap -X lua_script:contrib/wireshark/xfrm.lua
--   tshark -r session.pcap -X lua_script:contrib/wireshark/xfrm.lua -T fields -e xfrm.msg
--
-- or copy it to ~/.local/lib/wireshark/plugins/ for Wireshark.

local xfrm = Proto("xfrm", "XFRM netlink (message names)")
local f_msg = ProtoField.string("xfrm.msg", "XFRM message")
xfrm.fields = { f_msg }

local family_f = Field.new("netlink.family")
local type_f = Field.new("netlink.hdr_type")

local NETLINK_XFRM = 6
local NLM_F_REQUEST, NLM_F_MULTI = 0x1, 0x2

-- include/uapi/linux/xfrm.h, XFRM_MSG_*
local names = {
    [16] = "NEWSA", [17] = "DELSA", [18] = "GETSA", [19] = "NEWPOLICY", [20] = "DELPOLICY",
    [21] = "GETPOLICY", [22] = "ALLOCSPI", [23] = "ACQUIRE", [24] = "EXPIRE", [25] = "UPDPOLICY",
    [26] = "UPDSA", [27] = "POLEXPIRE", [28] = "FLUSHSA", [29] = "FLUSHPOLICY", [30] = "NEWAE",
    [31] = "GETAE", [32] = "REPORT", [33] = "MIGRATE", [34] = "NEWSADINFO", [35] = "GETSADINFO",
    [36] = "NEWSPDINFO", [37] = "GETSPDINFO", [38] = "MAPPING", [39] = "SETDEFAULT",
    [40] = "GETDEFAULT",
}
-- netlink control messages; NOOP and OVERRUN are xfrmwatch's markers in a recording
local control = { [1] = "NOOP", [2] = "ERROR", [3] = "DONE", [4] = "OVERRUN (messages lost)" }

function xfrm.dissector(tvb, pinfo, tree)
    local fam = family_f()
    if fam == nil or fam.value ~= NETLINK_XFRM then
        return
    end
    local types = { type_f() }
    if #types == 0 then
        return
    end
    local out = {}
    local subtree = tree:add(xfrm, tvb())
    for _, t in ipairs(types) do
        local name = names[t.value] or control[t.value] or string.format("type %d", t.value)
        -- nlmsghdr after the type: flags (u16), seq (u32), pid (u32), host byte order
        local flags = tvb(t.offset + 2, 2):le_uint()
        if t.value >= 16 and bit.band(flags, NLM_F_REQUEST) ~= 0 then
            name = name .. " request"
        elseif t.value >= 16 and bit.band(flags, NLM_F_MULTI) ~= 0 then
            name = name .. " (dump)"
        elseif t.value == 1 then
            local pid = tvb(t.offset + 8, 4):le_uint()
            local len = tvb(t.offset - 4, 4):le_uint()
            if pid == 0 and len > 16 then
                name = name .. " (" .. tvb(t.offset + 12, len - 16):stringz() .. ")"
            elseif pid == 0 then
                name = name .. " (end of recording)"
            else
                name = name .. " (process name) pid " .. tostring(pid)
            end
        end
        subtree:add(f_msg, t.range, name)
        out[#out + 1] = name
    end
    pinfo.cols.protocol = "XFRM"
    pinfo.cols.info = table.concat(out, ", ")
end

register_postdissector(xfrm)
