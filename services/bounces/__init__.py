"""`lifecycle bounces`: the SMTP (or LMTP) receiver of the reports mail sends back, bounces and complaints."""
