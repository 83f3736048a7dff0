DROP VIEW purchase_details;
DROP VIEW pageview_details;
DROP VIEW event_details;
DROP TABLE purchases;
DROP TABLE pageviews;
DROP TABLE events;
DROP TABLE event_types;
DROP TABLE users;
