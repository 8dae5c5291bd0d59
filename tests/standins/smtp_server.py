"""An SMTP stand-in on 127.0.0.1 (aiosmtpd) that records every message it accepts.

``fail_next(n, reply)`` answers the next ``n`` messages' DATA with ``reply`` instead of
accepting them: a ``451`` is a temporary failure the sender should retry, a ``550`` a
permanent refusal (RFC 5321, section 4.2.1).
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html", "plain"))
        return part.get_content() if part is not None else ""


@dataclass
class SmtpStandIn:
    messages: list[ReceivedMail] = field(default_factory=list)
    refused: int = 0
    failures_left: int = 0
    failure_reply: str = "451 4.3.0 Temporary failure, try again later"
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    controller: Any = None

    def fail_next(self, count: int, reply: str = "451 4.3.0 Temporary failure, try again later") -> None:
        with self.lock:
            self.failures_left, self.failure_reply = count, reply

    def start(self) -> SmtpStandIn:
        from aiosmtpd.controller import Controller

        standin = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                with standin.lock:
                    if standin.failures_left > 0:
                        standin.failures_left -= 1
                        standin.refused += 1
                        return standin.failure_reply
                    standin.messages.append(
                        ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message)
                    )
                return "250 Message accepted for delivery"

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
