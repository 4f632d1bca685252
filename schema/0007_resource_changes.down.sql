DROP TRIGGER resource_changed ON resource;
DROP FUNCTION morpheo_resource_changed();
