//! The request types every CLI node answers: `ECHO` and `ADD`.

use p2prs::{HandlerResult, Incoming, Message};

/// `ECHO`: answer with the same data (and body), so scripts can test requests.
pub fn echo(req: &mut Incoming) -> HandlerResult {
    if !req.is_request() {
        return Err("ECHO is a request type: send it with 'request'".into());
    }
    let msg = req.take_message();
    let mut answer = Message::new("ECHO", msg.data_value().clone());
    if let Some(body) = msg.into_body() {
        answer = answer.with_body(body);
    }
    req.respond(answer)?;
    Ok(())
}

/// `ADD`: answer `n + 1` as `ADD RESP`, like the p2py README's example.
pub fn add(req: &mut Incoming) -> HandlerResult {
    let n: i64 = req
        .message()
        .data()
        .map_err(|e| format!("ADD expects a whole number: {e}"))?;
    let sum = n
        .checked_add(1)
        .ok_or("ADD: the number is too large to add 1")?;
    req.respond(Message::new("ADD RESP", sum))?;
    Ok(())
}
