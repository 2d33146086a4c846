-- Two recipients, one full and one not: RCPT refuses the full one only,
-- and the message goes on for the other (continue at end of message). The
-- same holds when, without SIZE=, both pass RCPT and the message turns out
-- too big for one of them only.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s two_rcpts.lua
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

    check(mt.mailfrom(conn, "<sender@remote.test>", "SIZE=1000"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<full@example.org>"), "RCPT")
    expect(conn, SMFIR_REPLYCODE, "RCPT full@")
    check(mt.rcptto(conn, "<free@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT free@")
    check(mt.header(conn, "Subject", "two recipients"), "header")
    check(mt.bodystring(conn, "Hello.\r\n"), "body")
    expect(conn, SMFIR_CONTINUE, "body")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_CONTINUE, "end of message (free@ has room)")

    check(mt.mailfrom(conn, "<sender@remote.test>"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL (second message)")
    check(mt.rcptto(conn, "<nearly@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT nearly@ without SIZE")
    check(mt.rcptto(conn, "<free@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT free@ without SIZE")
    check(mt.header(conn, "Subject", "big"), "header")
    -- 2 x 60000 bytes: too big for nearly@, small for free@.
    local line = string.rep("y", 59998) .. "\r\n"
    check(mt.bodystring(conn, line), "body")
    expect(conn, SMFIR_CONTINUE, "body chunk 1")
    check(mt.bodystring(conn, line), "body")
    expect(conn, SMFIR_CONTINUE, "body chunk 2")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_CONTINUE, "end of message (free@ has room)")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
