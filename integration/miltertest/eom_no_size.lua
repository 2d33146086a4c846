-- Without SIZE= the RCPT check counts 1 byte and lets nearly@ through;
-- the message turns out too big for it, so end of message answers with the
-- over-quota reply (452 4.2.2 Mailbox full) for the whole message. A small
-- one to the same mailbox on the same connection then goes through: the
-- counted size starts afresh with each message.
--
-- Run by integration/tests/miltertest.rs as
--   miltertest -D socket=<milter socket path> -s eom_no_size.lua
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

    check(mt.mailfrom(conn, "<sender@remote.test>"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL")
    check(mt.rcptto(conn, "<nearly@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT nearly@ without SIZE")

    check(mt.header(conn, "From", "<sender@remote.test>"), "header")
    check(mt.header(conn, "Subject", "too big"), "header")
    -- 2 x 60000 bytes: more than nearly@'s room plus grace (106857).
    local line = string.rep("x", 59998) .. "\r\n"
    check(mt.bodystring(conn, line), "body")
    expect(conn, SMFIR_CONTINUE, "body chunk 1")
    check(mt.bodystring(conn, line), "body")
    expect(conn, SMFIR_CONTINUE, "body chunk 2")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_REPLYCODE, "end of message")
    assert(mt.eom_check(conn, MT_SMTPREPLY, "452", "4.2.2", "Mailbox full"),
           "end of message: reply is not 452 4.2.2 Mailbox full")

    -- Next message, same connection, small: continue.
    check(mt.mailfrom(conn, "<sender@remote.test>"), "MAIL")
    expect(conn, SMFIR_CONTINUE, "MAIL (second message)")
    check(mt.rcptto(conn, "<nearly@example.org>"), "RCPT")
    expect(conn, SMFIR_CONTINUE, "RCPT nearly@ (second message)")
    check(mt.header(conn, "Subject", "small"), "header")
    check(mt.bodystring(conn, "Fits.\r\n"), "body")
    expect(conn, SMFIR_CONTINUE, "body (second message)")
    check(mt.eom(conn), "end of message")
    expect(conn, SMFIR_CONTINUE, "end of message (second message)")

    check(mt.disconnect(conn), "disconnect")
end

local ok, err = pcall(scenario)
if not ok then
    mt.echo("FAILED: " .. tostring(err))
    error(err, 0)
end
