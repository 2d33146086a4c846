-- A user with room: RCPT and end of message both continue.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s under_quota.lua
-- against ramdir's quota milter with the directory and usage set up there
-- (limits 1 MiB, 10% grace; free@ has room, full@ is at its limit, nearly@
-- has 2000 bytes left, info@ -> full@, team@ -> full@ + free@).
-- The milter negotiates away CONNECT, HELO, DATA and end-of-header, so no
-- script sends them (miltertest fills in only the steps negotiated).

-- miltertest prints nothing when a script fails: failures are echoed.
local function expect(conn, want, what)
    local got = mt.getreply(conn)
    if got ~= want then
        error(string.format("%s: milter replied '%s', want '%s'",
                            what, string.char(got), string.char(want)), 2)
    end
end

local function check(err, what)
    if err ~= nil then
        error(what .. ": " .. tostring(err), 2)
    end
end

local function scenario()
    local conn = mt.connect("unix:" .. socket)
    assert(conn, "cannot connect to " .. socket)

    check(mt.mailfrom(conn, "<sender@remote.test>", "SIZE=5000"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<free@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT free@ (room left)")

    check(mt.header(conn, "Subject", "under quota"), "header")
    check(mt.bodystring(conn, "Hello.\r\n"), "body")
    expect(conn, SMFIR_CONTINUE, "body")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_CONTINUE, "end of message")
    assert(not mt.eom_check(conn, MT_SMTPREPLY, "452"), "no reply at end of message")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
